"""Every setting as an environment variable, rendered from ``infra.settings.Settings``.

    python -m infra.deploy.settings_table            # print the README table
    python -m infra.deploy.settings_table --write    # update README.md and .env.example
    python -m infra.deploy.settings_table --check    # exit 1 when either is out of date

For each field: its variable (the field's ``validation_alias``, else ``BITBUDDIES_`` and
its name), its default, whether it is a secret, and the comment above it or on its line
in infra/settings.py (the settings' one documentation; a ``Field(description=...)``
wins when a field has one). The table sits in README.md between the marker comments below;
tests/infra/test_deploy.py fails when it, or infra/deploy/.env.example, is stale.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import json
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from infra import settings as settings_module
from infra.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
ENV_EXAMPLE = Path(__file__).resolve().parent / ".env.example"
START = "<!-- settings-table:start (python -m infra.deploy.settings_table --write) -->"
END = "<!-- settings-table:end -->"

# What a production deployment must set: compose.yaml refuses to start without them
# (``${NAME:?...}``), so they are the uncommented lines of .env.example.
REQUIRED_IN_PRODUCTION = {
    "BITBUDDIES_ENVIRONMENT": "production",
    "BITBUDDIES_PUBLIC_URL": "",
    "BITBUDDIES_SIGNING_SECRET": "",
    "FAL_KEY": "",
    "BITBUDDIES_SMTP_URL": "",
}
# Read by compose.yaml itself, not by the application.
COMPOSE_VARIABLES = {
    "POSTGRES_PASSWORD": "the bitbuddies database user's password (compose builds DATABASE_URL)",
    "TEMPORAL_DB_PASSWORD": "the Temporal server's database password",
    "BITBUDDIES_IMAGE": "the image to run (default bitbuddies:latest, built by compose)",
    "BITBUDDIES_MODELSERVER_IMAGE": "the local model server's image (profile local-models)",
}


@dataclass(frozen=True)
class Row:
    name: str  # the field
    variable: str
    default: str
    secret: bool
    description: str


def env_name(name: str, field: FieldInfo) -> str:
    if isinstance(field.validation_alias, str):
        return field.validation_alias
    prefix = str(Settings.model_config.get("env_prefix", ""))
    return f"{prefix}{name}".upper()


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value)
    return value


def default_text(field: FieldInfo) -> str:
    """The default as one would write it in the environment; empty when unset."""
    value = field.get_default(call_default_factory=True, validated_data={})
    if value is None:
        return ""
    value = _plain(value)
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _comments() -> dict[str, str]:
    """Each Settings field's comment: the comment lines right above it, then the comment
    on its own lines (``# noqa`` and friends left out)."""
    source = inspect.getsource(settings_module)
    lines = source.splitlines()
    on_line: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            on_line[token.start[0]] = token.string.lstrip("#").strip()
    cls = next(
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.ClassDef) and node.name == Settings.__name__
    )
    found: dict[str, str] = {}
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        row = node.lineno - 1  # 1-based line above
        while row >= 1 and lines[row - 1].strip().startswith("#"):
            above.insert(0, lines[row - 1].strip().lstrip("#").strip())
            row -= 1
        trailing = [
            on_line[n]
            for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)
            if n in on_line and not on_line[n].lower().startswith(("noqa", "type:"))
        ]
        found[node.target.id] = " ".join(part for part in (*above, *trailing) if part)
    return found


def _choices(field: FieldInfo) -> str:
    if get_origin(field.annotation) is Literal:
        return "One of " + ", ".join(f"`{c}`" for c in get_args(field.annotation)) + "."
    return ""


def rows() -> list[Row]:
    comments = _comments()
    return [
        Row(
            name=name,
            variable=env_name(name, field),
            default=default_text(field),
            secret=field.annotation is not None and "SecretStr" in repr(field.annotation),
            description=" ".join(
                part for part in (_choices(field), field.description or comments.get(name)) if part
            ),
        )
        for name, field in Settings.model_fields.items()
    ]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


LONG_DEFAULT = 120  # characters: longer defaults are not spelled out in the table


def render_table() -> str:
    out = [
        "| variable | default | secret | what it is |",
        "|---|---|---|---|",
    ]
    for row in rows():
        default = f"`{_cell(row.default)}`" if row.default else "(unset)"
        if len(row.default) > LONG_DEFAULT:  # a structure: its source says it better
            default = "(long: in `infra/settings.py`, and `.env.example`)"
        secret = "yes" if row.secret else ""
        out.append(f"| `{row.variable}` | {default} | {secret} | {_cell(row.description)} |")
    return "\n".join(out) + "\n"


def render_env_example() -> str:
    out = [
        "# BitBuddies: every setting, as an environment variable. Generated by",
        "# `python -m infra.deploy.settings_table --write`; edit infra/settings.py, not this.",
        "# Copy to infra/deploy/.env for compose.yaml. Unset lines keep the default shown;",
        "# never leave a secret as an empty assignment: an empty value is a value.",
        "",
        "# --- read by compose.yaml itself ---",
    ]
    for variable, what in COMPOSE_VARIABLES.items():
        out += [f"# {what}", f"{variable}=" if "PASSWORD" in variable else f"# {variable}="]
    out += ["", "# --- required in production (compose.yaml refuses to start without them) ---"]
    table = rows()
    for row in table:
        if row.variable in REQUIRED_IN_PRODUCTION:
            out += _wrapped(row.description)
            out.append(f"{row.variable}={REQUIRED_IN_PRODUCTION[row.variable]}")
    out += ["", "# --- everything else: the default unless uncommented ---"]
    for row in table:
        if row.variable in REQUIRED_IN_PRODUCTION:
            continue
        out += _wrapped(row.description + (" (secret)" if row.secret else ""))
        if len(row.default) > LONG_DEFAULT:
            out += ["# (its default is long: see infra/settings.py; set only overrides)"]
            out.append(f"# {row.variable}=")
        else:
            out.append(f"# {row.variable}={'' if row.secret else row.default}")
    return "\n".join(out) + "\n"


def _wrapped(text: str, width: int = 88) -> list[str]:
    lines: list[str] = []
    current = "#"
    for word in text.split():
        if len(current) + 1 + len(word) > width and current != "#":
            lines.append(current)
            current = "#"
        current += " " + word
    if current != "#":
        lines.append(current)
    return lines


def replace_table(readme: str, table: str) -> str:
    start, end = readme.index(START), readme.index(END)
    return readme[: start + len(START)] + "\n\n" + table + "\n" + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="update README.md and .env.example")
    mode.add_argument("--check", action="store_true", help="exit 1 when either is stale")
    args = parser.parse_args(argv)
    table = render_table()
    if not (args.write or args.check):
        sys.stdout.write(table)
        return 0
    wanted = {
        README: replace_table(README.read_text(encoding="utf-8"), table),
        ENV_EXAMPLE: render_env_example(),
    }
    stale = [
        path
        for path, text in wanted.items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    if args.check:
        for path in stale:
            print(
                f"{path.relative_to(ROOT)} is out of date with infra/settings.py", file=sys.stderr
            )
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path], encoding="utf-8")
        print(f"updated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
