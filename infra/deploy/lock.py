"""Write the image's dependency locks from pyproject.toml.

    python -m infra.deploy.lock            # rewrite both locks
    python -m infra.deploy.lock --check    # fail if pyproject's pins and the locks disagree

The image (infra/deploy/Dockerfile) installs exactly these files with ``pip install
--require-hashes --no-deps``: every package, direct or transitive, at one version with
its hashes, so two builds of one commit get the same bytes. ``requirements.lock`` is the
production image's (pyproject's dependencies), ``requirements-local.lock`` the model
server image's (plus the ``local`` extra). Both are resolved for the image's platform
(CPython 3.12, x86-64 glibc), not this machine's.

Writing needs ``uv`` (``pip install uv``) and the package index; checking needs neither,
and tests/infra/test_deploy.py runs it: each direct dependency's pin in pyproject.toml
must be the version its lock holds.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = Path(__file__).resolve().parent
PYTHON_VERSION = "3.12"  # the image's (Dockerfile ARG PYTHON_VERSION)
PLATFORM = "x86_64-manylinux_2_28"  # Debian bookworm's glibc 2.36 on x86-64
LOCKS: dict[str, list[str]] = {  # file -> pyproject extras it adds
    "requirements.lock": [],
    "requirements-local.lock": ["local"],
}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;]+)")
_LOCKED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\]+)", re.MULTILINE)


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(extras: list[str]) -> dict[str, str]:
    """pyproject's direct dependencies (and those of ``extras``): name -> pinned version."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    found: dict[str, str] = {}
    for spec in specs:
        match = _PIN.match(spec.strip())
        if match is None:
            raise ValueError(f"pyproject.toml: {spec!r} is not pinned with ==")
        found[_normal(match[1])] = match[2]
    return found


def locked(path: Path) -> dict[str, str]:
    return {_normal(name): version for name, version in _LOCKED.findall(path.read_text())}


def disagreements() -> list[str]:
    problems = []
    for name, extras in LOCKS.items():
        path = DEPLOY / name
        if not path.exists():
            problems.append(f"{name} is missing")
            continue
        have = locked(path)
        for package, version in sorted(pins(extras).items()):
            if have.get(package) != version:
                problems.append(
                    f"{name}: {package} is {have.get(package, 'absent')}, pyproject pins {version}"
                )
    return problems


def write() -> None:
    uv = shutil.which("uv")
    if uv is None:
        sys.exit("writing the locks needs uv: pip install uv")
    for name, extras in LOCKS.items():
        command = [uv, "pip", "compile", str(ROOT / "pyproject.toml")]
        command += [arg for extra in extras for arg in ("--extra", extra)]
        command += ["--python-version", PYTHON_VERSION, "--python-platform", PLATFORM]
        command += ["--generate-hashes", "--quiet", "-o", str(DEPLOY / name)]
        command += ["--custom-compile-command", "python -m infra.deploy.lock"]
        subprocess.run(
            command,
            check=True,
            cwd=ROOT,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; write nothing")
    args = parser.parse_args()
    if not args.check:
        write()
    if problems := disagreements():
        sys.exit("the locks disagree with pyproject.toml:\n  " + "\n  ".join(problems))
    print("the locks hold pyproject.toml's pins")


if __name__ == "__main__":
    main()
