"""The image installs exactly its lock files (infra/deploy/lock.py): they must hold
pyproject.toml's pins, carry a hash for every package, and be what the Dockerfile
installs, with hashes required."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from infra.deploy import lock

DOCKERFILE = lock.DEPLOY / "Dockerfile"


def test_the_locks_hold_pyprojects_pins() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "infra.deploy.lock", "--check"],
        capture_output=True,
        text=True,
        cwd=lock.ROOT,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    # the check is not vacuous: every direct dependency is among what it compared
    assert set(lock.pins([])) <= set(lock.locked(lock.DEPLOY / "requirements.lock"))
    assert set(lock.pins(["local"])) <= set(lock.locked(lock.DEPLOY / "requirements-local.lock"))


def test_a_pin_the_lock_does_not_hold_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / "requirements.lock"
    text = (lock.DEPLOY / "requirements.lock").read_text()
    stale.write_text(re.sub(r"^fastapi==\S+", "fastapi==0.0.1", text, flags=re.MULTILINE))
    (tmp_path / "requirements-local.lock").write_text(
        (lock.DEPLOY / "requirements-local.lock").read_text()
    )
    monkeypatch.setattr(lock, "DEPLOY", tmp_path)
    assert lock.disagreements() == [
        f"requirements.lock: fastapi is 0.0.1, pyproject pins {lock.pins([])['fastapi']}"
    ]


def test_every_locked_package_has_a_hash() -> None:
    for name in lock.LOCKS:
        text = (lock.DEPLOY / name).read_text()
        entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
        assert entries
        for entry in entries:
            assert "--hash=sha256:" in entry, f"{name}: {entry.splitlines()[0]} has no hash"


def test_the_image_installs_the_locks_with_hashes_required() -> None:
    dockerfile = DOCKERFILE.read_text()
    for name in lock.LOCKS:
        assert f"COPY infra/deploy/{name} " in dockerfile
    installs = re.findall(r"pip install ([^\n\\]*)", dockerfile)
    assert installs.count("--no-compile --require-hashes --no-deps -r /tmp/requirements.lock") == 2
    # the project itself resolves nothing more
    assert all("--no-deps" in line for line in installs), installs
