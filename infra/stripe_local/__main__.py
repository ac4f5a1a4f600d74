"""``python -m infra.stripe_local``: run the local Stripe stand-in with uvicorn.

The webhook secret comes from the environment (BITBUDDIES_STRIPE_WEBHOOK_SECRET), never
from the command line, where other local users could read it."""

from __future__ import annotations

import argparse
import logging
import os

import uvicorn

from infra.stripe_local.server import create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m infra.stripe_local", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--webhook-url", required=True, help="where events are delivered")
    parser.add_argument(
        "--public-url", default=None, help="base URL of the payment pages (http://HOST:PORT)"
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    secret = os.environ.get("BITBUDDIES_STRIPE_WEBHOOK_SECRET", "")
    if not secret:
        parser.error("BITBUDDIES_STRIPE_WEBHOOK_SECRET must be set: it signs the webhooks")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    public_url = args.public_url or f"http://{args.host}:{args.port}"
    app = create_app(public_url=public_url, webhook_url=args.webhook_url, webhook_secret=secret)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
