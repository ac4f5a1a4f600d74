"""The workflow's step table as the tests expect it, read from workflows/contract.py
(``MODEL_STEPS``), never copied: which model steps a generation runs, in order, and the
app of our local model server each calls (the local adapter's table)."""

from __future__ import annotations

from activities.providers.local import APPS
from workflows.contract import EXPAND, MODEL_STEPS, Step

# Each model step's name -> the local app it calls (expand calls cartoonify's again).
STEP_APPS: dict[str, str] = {s.name: APPS[s.name] for s in MODEL_STEPS}


def model_steps(*, expand: bool) -> list[Step]:
    """The model steps a generation runs, in the workflow's order. ``expand`` runs only
    when the photo's analysis says it is not full-body (workflows/bitbuddy.py); every
    other step always runs."""
    return [s for s in MODEL_STEPS if expand or s is not EXPAND]


def step_names(*, expand: bool) -> list[str]:
    """As ``model_steps``, by name."""
    return [s.name for s in model_steps(expand=expand)]
