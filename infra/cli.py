"""``bitbuddies``: the owner's command line. One subcommand per job, each a function that
takes its parsed arguments and the settings (DATABASE_URL and the rest, as every process
reads them: infra/settings.py) and returns the exit status. ``COMMANDS`` registers them.

    bitbuddies alerts [--since 1h] [--limit 50]   recent owner alerts, newest first
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from infra.database import alerts as alerts_repo
from infra.settings import Settings, get_settings

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``1h``, ``7d``."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30m, 1h or 7d")
    return timedelta(**{_UNITS[match[2]]: float(match[1])})


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]


# --- alerts ---------------------------------------------------------------------------


def _alerts_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since", type=duration, default=timedelta(hours=24), help="how far back (24h)"
    )
    parser.add_argument("--limit", type=int, default=50, help="at most this many (50)")


async def _alerts(args: argparse.Namespace, settings: Settings) -> int:
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True, row_factory=dict_row
    ) as conn:
        found = await alerts_repo.recent(conn, args.since, limit=args.limit)
    if not found:
        print(f"no alerts in the last {args.since}")
        return 0
    for alert in found:
        counted = f" ({alert.digest_count} counted)" if alert.digest_count is not None else ""
        print(
            f"#{alert.id}  {alert.created_at:%Y-%m-%d %H:%M:%S %Z}  {alert.kind}"
            f"  priority {alert.priority}  {alert.delivery}{counted}"
        )
        print(f"    {alert.title}")
        print(f"    user {alert.user_id or '-'}  generation {alert.generation_id or '-'}")
        print(f"    {alert.link or '-'}")
    return 0


COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        Command(
            "alerts",
            "recent owner alerts: kind, priority, sent or suppressed, title, user, generation"
            " and the link to the workflow",
            _alerts_arguments,
            _alerts,
        ),
    )
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="bitbuddies", description="The BitBuddies owner's tools.")
    sub = top.add_subparsers(dest="command", required=True, metavar="command")
    for command in COMMANDS.values():
        command.add_arguments(sub.add_parser(command.name, help=command.help))
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return asyncio.run(COMMANDS[args.command].run(args, get_settings()))


if __name__ == "__main__":
    sys.exit(main())
