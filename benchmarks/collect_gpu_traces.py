"""Measure real runtime traces on a CUDA GPU, for the examples and the accuracy benchmark.

Not part of the service, and not run by the tests: it needs a CUDA GPU, PyTorch and
torchvision, which the service does not depend on. Weights are random (the machine that
ran it had no network); a forward pass costs the same whatever the weights hold.

Three workloads, each run for a fixed wall-clock budget, one trace per request, written
to ``OUT/<gpu>_<workload>.jsonl`` as soon as it is measured (a run starts each file anew):

* ``resnet50_vision``: torchvision's ResNet-50 in fp16, channels-last, with cuDNN's
  autotuner on. A request is a batch of
  uint8 images copied from pinned memory, normalised on the GPU, classified, and its
  labels copied back. Batches are padded to a power of two (1-64) as servers bucket
  them, and the image side is one of six (128-512): each of the 42 shapes pays the
  autotuner the first time it runs (about a second on an H200 with cuDNN 9.19), the
  bimodal "first occurrence of a shape" runtimes of real GPU traces.
* ``llm_decode``: a 6-layer, 2048-wide decoder (0.44B parameters, bf16) with a KV
  cache, greedy decoding, the next token read back after every step as a streaming
  server does. The trace has what a scheduler knows before the request runs:
  ``input_tokens`` and ``max_tokens``. How many tokens the request produces is hidden,
  as it is for a chat server: drawn from a lognormal (median 50, log-sd 0.9) capped at
  ``max_tokens``, and 3% of requests are aborted by their client after 1-8 tokens.
  Random weights never choose when to stop, so this draw stands in for the model's.
* ``text_encoder``: a BERT-base-sized encoder (12 layers, 768 wide, bf16) embedding a
  batch of 1-64 texts of lognormal lengths (median 60 tokens, at most 512), padded to
  the longest; the trace has ``batch_size``, ``seq_len`` (the padded length) and
  ``tokens`` (the real ones).

cuDNN's autotuner is on for all three workloads (when the files were made it was switched
on by the vision workload, which ran first), and PyTorch 2.11 runs the other two partly
through cuDNN on that GPU (attention, most likely). Their
timings show it: on the H200, 992 of the encoder's 1,088 batches had a (batch, padded
length) not seen before and took about 50 ms whatever their size, against 3-15 ms for a
repeat; the decoder's requests with prompts over 1,200 tokens took a median of 1.6 s
among its first 160 requests and 0.14 s after them. That is the first-run effect of real
serving at another scale, and the files are kept as measured.

Run on the GPU machine from the repository root::

    python3 benchmarks/collect_gpu_traces.py --out DIR [--vision-seconds 100 ...]

The H200 files in ``examples/data`` come from two such runs (the encoder's from the first,
made with an earlier version of this script whose encoder code was this one);
``h200_collection.json`` beside them gives the machine, the versions and the commands.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


class TraceWriter:
    """One JSON line per request, flushed at once so that a crash loses nothing measured."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        self._file = path.open("w")

    def write(self, row: dict) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        self.rows += 1

    def close(self) -> None:
        self._file.close()


def _timed(fn) -> float:
    """Wall-clock milliseconds of ``fn()``, which must end with the GPU idle (it reads results back)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


# ----------------------------------------------------------------------------- vision


def collect_vision(writer: TraceWriter, seconds: float, seed: int) -> None:
    import torchvision

    model = torchvision.models.resnet50(weights=None).cuda().half().eval().to(memory_format=torch.channels_last)
    mean = torch.tensor([0.485, 0.456, 0.406], device="cuda", dtype=torch.half).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device="cuda", dtype=torch.half).view(1, 3, 1, 1)
    rng = np.random.default_rng(seed)
    batches = np.array([1, 2, 4, 8, 16, 32, 64])
    sides = np.array([128, 224, 256, 320, 384, 512])
    # Decoded images as a server would hold them: uint8 HWC in pinned memory.
    pinned = torch.randint(0, 256, (64 * 512 * 512 * 3,), dtype=torch.uint8).pin_memory()

    def request(batch: int, side: int) -> torch.Tensor:
        images = pinned[: batch * side * side * 3].view(batch, side, side, 3)
        with torch.inference_mode():
            x = images.cuda(non_blocking=True).permute(0, 3, 1, 2).half().div_(255).sub_(mean).div_(std)
            return model(x).argmax(-1).cpu()

    request(1, 64)  # CUDA context, cuDNN and cuBLAS handles: a server pays this at start, not per request
    deadline = time.monotonic() + seconds
    seq = 0
    while time.monotonic() < deadline:
        batch, side = int(rng.choice(batches)), int(rng.choice(sides))
        ts = time.time()
        ms = _timed(lambda: request(batch, side))
        writer.write({"workload": "vision", "seq": seq, "ts": ts, "batch_size": batch, "image_size": side,
                      "runtime_ms": ms})
        seq += 1


# ------------------------------------------------------------------------------- LLM


class Decoder:
    """A pre-norm decoder with learned positions and a static KV cache; random bf16 weights."""

    def __init__(self, layers: int = 6, width: int = 2048, heads: int = 16, ffn: int = 5632,
                 vocab: int = 32000, max_len: int = 4096) -> None:
        torch.manual_seed(0)
        dev, dt = "cuda", torch.bfloat16

        def w(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, device=dev, dtype=dt) * 0.02

        self.heads, self.head_dim, self.width, self.vocab = heads, width // heads, width, vocab
        self.embed, self.pos, self.head = w(vocab, width), w(max_len, width), w(vocab, width)
        self.norm = torch.ones(width, device=dev, dtype=dt)
        self.blocks = [
            {"qkv": w(3 * width, width), "out": w(width, width), "up": w(2 * ffn, width), "down": w(width, ffn),
             "n1": torch.ones(width, device=dev, dtype=dt), "n2": torch.ones(width, device=dev, dtype=dt)}
            for _ in range(layers)
        ]
        self.k = torch.zeros(layers, 1, heads, max_len, self.head_dim, device=dev, dtype=dt)
        self.v = torch.zeros_like(self.k)

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (self.width,), weight, 1e-6)

    def forward(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """Logits of the last position; ``ids`` (1, T) sit at positions start..start+T-1."""
        t = ids.shape[1]
        x = self.embed[ids] + self.pos[start:start + t]
        for i, b in enumerate(self.blocks):
            q, k, v = F.linear(self._rms(x, b["n1"]), b["qkv"]).view(1, t, 3, self.heads, self.head_dim).unbind(2)
            self.k[i, :, :, start:start + t] = k.transpose(1, 2)
            self.v[i, :, :, start:start + t] = v.transpose(1, 2)
            a = F.scaled_dot_product_attention(q.transpose(1, 2), self.k[i, :, :, :start + t],
                                               self.v[i, :, :, :start + t], is_causal=t > 1)
            x = x + F.linear(a.transpose(1, 2).reshape(1, t, self.width), b["out"])
            gate, up = F.linear(self._rms(x, b["n2"]), b["up"]).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, b["down"])
        return F.linear(self._rms(x[:, -1:], self.norm), self.head)

    @torch.inference_mode()
    def generate(self, prompt_tokens: int, new_tokens: int) -> list[int]:
        ids = torch.randint(0, self.vocab, (1, prompt_tokens), device="cuda")
        token = self.forward(ids, 0).argmax(-1)
        out = [int(token.item())]  # streamed to the client: one read-back per token
        for step in range(1, new_tokens):
            token = self.forward(token, prompt_tokens + step - 1).argmax(-1)
            out.append(int(token.item()))
        return out


def collect_llm(writer: TraceWriter, seconds: float, seed: int) -> None:
    model = Decoder()
    rng = np.random.default_rng(seed)
    model.generate(16, 4)
    deadline = time.monotonic() + seconds
    seq = 0
    while time.monotonic() < deadline:
        prompt = int(np.clip(round(math.exp(rng.normal(math.log(400), 0.9))), 8, 3000))
        cap = int(rng.choice([64, 128, 256, 512], p=[0.2, 0.3, 0.3, 0.2]))
        produced = min(cap, max(1, round(math.exp(rng.normal(math.log(50), 0.9)))))
        if rng.random() < 0.03:
            produced = int(rng.integers(1, 9))
        ts = time.time()
        ms = _timed(lambda: model.generate(prompt, produced))
        writer.write({"workload": "llm", "seq": seq, "ts": ts, "input_tokens": prompt, "max_tokens": cap,
                      "runtime_ms": ms})
        seq += 1


# --------------------------------------------------------------------------- encoder


class Encoder:
    """A BERT-base-sized encoder (post-norm, GELU) with a padding mask; random bf16 weights."""

    def __init__(self, layers: int = 12, width: int = 768, heads: int = 12, ffn: int = 3072,
                 vocab: int = 30522, max_len: int = 512) -> None:
        torch.manual_seed(1)
        dev, dt = "cuda", torch.bfloat16

        def w(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, device=dev, dtype=dt) * 0.02

        self.heads, self.head_dim, self.width, self.vocab = heads, width // heads, width, vocab
        self.embed, self.pos = w(vocab, width), w(max_len, width)
        self.blocks = [{"qkv": w(3 * width, width), "out": w(width, width), "up": w(ffn, width),
                        "down": w(width, ffn)} for _ in range(layers)]

    @torch.inference_mode()
    def embed_batch(self, lengths: np.ndarray) -> torch.Tensor:
        n, t = len(lengths), int(lengths.max())
        ids = torch.randint(0, self.vocab, (n, t), device="cuda")
        keep = torch.arange(t, device="cuda")[None, :] < torch.as_tensor(lengths, device="cuda")[:, None]
        mask = keep[:, None, None, :]
        x = self.embed[ids] + self.pos[:t]
        for b in self.blocks:
            q, k, v = F.linear(x, b["qkv"]).view(n, t, 3, self.heads, self.head_dim).unbind(2)
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=mask)
            x = F.layer_norm(x + F.linear(a.transpose(1, 2).reshape(n, t, self.width), b["out"]), (self.width,))
            x = F.layer_norm(x + F.linear(F.gelu(F.linear(x, b["up"])), b["down"]), (self.width,))
        pooled = (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
        return pooled.float().cpu()


def collect_encoder(writer: TraceWriter, seconds: float, seed: int) -> None:
    model = Encoder()
    rng = np.random.default_rng(seed)
    model.embed_batch(np.array([8]))
    deadline = time.monotonic() + seconds
    seq = 0
    while time.monotonic() < deadline:
        batch = int(rng.integers(1, 65))
        lengths = np.clip(np.round(np.exp(rng.normal(math.log(60), 0.8, batch))), 4, 512).astype(int)
        ts = time.time()
        ms = _timed(lambda: model.embed_batch(lengths))
        writer.write({"workload": "embedding", "seq": seq, "ts": ts, "batch_size": batch,
                      "seq_len": int(lengths.max()), "tokens": int(lengths.sum()), "runtime_ms": ms})
        seq += 1


# ------------------------------------------------------------------------------ main

WORKLOADS = {"resnet50_vision": collect_vision, "llm_decode": collect_llm, "text_encoder": collect_encoder}


def _gpu_tag(name: str) -> str:
    """'NVIDIA H200' -> 'h200': the file-name prefix."""
    words = [w for w in name.lower().replace("nvidia", "").split() if w]
    return words[0] if words else "gpu"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--vision-seconds", type=float, default=100)
    ap.add_argument("--llm-seconds", type=float, default=150)
    ap.add_argument("--encoder-seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = True  # per-shape kernel choice, as a tuned server runs
    gpu = torch.cuda.get_device_name(0)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        driver = None
    meta = {"gpu": gpu, "driver": driver, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
            "args": {k: str(v) for k, v in vars(args).items()}, "workloads": {}}
    budgets = {"resnet50_vision": args.vision_seconds, "llm_decode": args.llm_seconds,
               "text_encoder": args.encoder_seconds}
    failed = 0
    for offset, (name, collect) in enumerate(WORKLOADS.items()):
        if budgets[name] <= 0:
            continue
        writer = TraceWriter(args.out / f"{_gpu_tag(gpu)}_{name}.jsonl")
        started = time.monotonic()
        error = None
        try:
            collect(writer, budgets[name], args.seed + offset)
        except Exception:  # one workload's failure must not cost the others' device time
            error = traceback.format_exc()
            failed += 1
            print(error, file=sys.stderr)
        finally:
            writer.close()
            torch.cuda.empty_cache()
        meta["workloads"][name] = {"file": writer.path.name, "rows": writer.rows,
                                   "seconds": round(time.monotonic() - started, 1), "error": error}
        print(f"{name}: {writer.rows} traces in {time.monotonic() - started:.0f} s", flush=True)
        (args.out / "collection.json").write_text(json.dumps(meta, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
