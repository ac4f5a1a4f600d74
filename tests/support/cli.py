"""The owner's command line as the owner runs it: the installed ``bitbuddies`` script,
in its own process, with the test stack's environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import Stack


def bitbuddies(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``bitbuddies *args`` with the stack's environment (and ``env``)."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("bitbuddies")), *args],
        env={**stack.cfg.app_env(), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
