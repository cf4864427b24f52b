"""The worker processes that train and retrain (see also test_training and test_retraining,
which run jobs in them)."""

from __future__ import annotations

import subprocess
import sys
import threading

from swarmpilot_predictor.workers import when_parent_dies


def test_a_worker_whose_server_died_before_it_began_watching_still_exits():
    # The training worker imports for a second or more before it watches its server: a
    # server killed meanwhile left it running on (its parent then init, not the server),
    # and it stored the version nobody was told of. It watches the pid it was started by.
    server = subprocess.Popen([sys.executable, "-c", "pass"])
    server.wait()
    gone = threading.Event()
    when_parent_dies(gone.set, parent=server.pid)
    assert gone.wait(5)
    alive = threading.Event()
    when_parent_dies(alive.set)  # this process's own parent, alive throughout
    assert not alive.wait(1.5)
