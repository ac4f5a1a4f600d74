"""Where things are: the repository's root and the tests' data files."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Data files the tests read (nsfw_probe.png and the script that makes it).
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# What tests leave for people to look at (screenshots, tables); not committed.
OUTPUT = REPO / "tests" / "output"
