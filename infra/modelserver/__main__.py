"""``python -m infra.modelserver``: run the local model server with uvicorn.

One process: jobs run in its thread pool, so the server must not be forked into
several workers (each would have its own queue and job table).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import uvicorn

from infra.modelserver.server import create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m infra.modelserver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--data-dir", type=Path, default=Path(".data/modelserver"))
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("BITBUDDIES_MODEL_SERVER_WORKERS", "2")),
        help="jobs run at once (thread pool size); env BITBUDDIES_MODEL_SERVER_WORKERS",
    )
    parser.add_argument(
        "--public-url",
        default=None,
        help="base URL clients reach this server at (default http://HOST:PORT)",
    )
    parser.add_argument(
        "--replay",
        action="store_true",
        help="benchmarks only: answer every job with its app's first result, instantly",
    )
    parser.add_argument(
        "--mimic",
        choices=["fal"],
        default=None,
        help="also serve the hosted endpoints of the fal model map (fal-ai/flux-pro/kontext,"
        " ...) with their documented arguments and results, computed by our apps",
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    public_url = args.public_url or f"http://{args.host}:{args.port}"
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per input download
    app = create_app(args.data_dir, public_url, args.workers, replay=args.replay, mimic=args.mimic)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
