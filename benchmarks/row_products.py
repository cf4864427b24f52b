"""What summing each row on its own (``row_dot``) costs against BLAS's matrix product.

The prediction path's products (a linear location's, a scale's, a shape model's knots)
go through ``row_dot`` so that a task's answer does not depend on its batch (see README,
Performance). This times both on products of the shapes a batch meets, single-threaded
BLAS as the server runs it; median of several calls.

    uv run python benchmarks/row_products.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from swarmpilot_predictor.distribution import row_dot

threadpool_limits(limits=1, user_api="blas")


def timed(f, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    rng = np.random.default_rng(0)
    print("| rows | design columns | knots | BLAS (ms) | row_dot (ms) |")
    print("|---:|---:|---:|---:|---:|")
    for n, d, k in ((1_000, 12, None), (100_000, 12, None), (100_000, 60, None),
                    (1_000, 12, 16), (100_000, 12, 16), (100_000, 60, 16)):
        A = rng.random((n, d))
        B = rng.random(d) if k is None else rng.random((d, k))
        blas, rows = timed(lambda: A @ B), timed(lambda: row_dot(A, B))
        print(f"| {n:,} | {d} | {k or '-'} | {blas:.3f} | {rows:.3f} |")


if __name__ == "__main__":
    main()
