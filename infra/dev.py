"""`make dev`: every part of BitBuddies on this machine, under one supervisor.

Starts Temporal (SQLite file), Redis, PostgreSQL, the local model server, the local
Stripe stand-in (infra/stripe_local/), one worker
per pool (interactive, media, housekeeping: infra/worker.py; not the optional batch
one) and the API; state lives in one
data folder (default .data/) and survives a restart. Ctrl-C stops everything, in reverse
order. If any part dies, everything stops and its log's last lines are shown.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from infra import supervisor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=Path(".data"))
    args = parser.parse_args()
    data_dir = args.data_dir.resolve()
    cfg = supervisor.StackConfig(data_dir=data_dir)

    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    started: list[supervisor.Managed] = []
    code = 0
    try:
        started = supervisor.start_all(cfg, announce=lambda line: print(line, flush=True))
        print(
            "\nBitBuddies is running.\n"
            f"  API          {cfg.api_url}   (docs: {cfg.api_url}/docs)\n"
            f"  Temporal UI  {cfg.temporal_ui_url}\n"
            f"  Stripe       {cfg.stripe_url}   (local stand-in: Checkout's Pay page)\n"
            f"  data         {data_dir}   (logs in {data_dir / 'logs'})\n"
            "Press Ctrl-C to stop.\n",
            flush=True,
        )
        while not stopping:
            dead = [s for s in started if not s.alive]
            if dead:
                print(f"\n{dead[0].name} stopped unexpectedly{dead[0]._tail()}", file=sys.stderr)
                code = 1
                break
            time.sleep(0.5)
    except supervisor.ServiceFailed as err:
        print(f"\n{err}", file=sys.stderr)
        code = 1
    finally:
        print("\nstopping ...", flush=True)
        for service in reversed(started):
            service.stop()
            print(f"  stopped {service.name}", flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
