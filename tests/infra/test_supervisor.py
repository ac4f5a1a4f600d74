"""The process supervisor in infra/supervisor.py, as the tests, benchmarks and `make dev`
use it: what happens to the children when the supervising process is told to stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.support.paths import REPO

SUPERVISOR = textwrap.dedent(
    """
    import time
    from infra import supervisor

    sleeper = supervisor.Managed("sleeper", ["sleep", "300"], ready=lambda: True)
    with supervisor.stop_on_sigterm():
        try:
            sleeper.start()
            print(sleeper.process.pid, flush=True)
            time.sleep(300)
        finally:
            sleeper.stop()
    """
)


def test_a_sigterm_to_the_supervisor_stops_its_children() -> None:
    """Children run in sessions of their own, so nothing else would stop them."""
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert supervisor.stdout is not None
    child = int(supervisor.stdout.readline())
    os.kill(child, 0)  # running

    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=30) != 0
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
