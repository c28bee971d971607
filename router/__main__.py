"""``python -m router --control-plane DSN [--host H] [--port P]``: one router process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from shard_map import RankshardError

from ._server import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router", description=__doc__)
    parser.add_argument("--control-plane", default=os.environ.get("RANKSHARD_CONTROL_PLANE"), help="PostgreSQL DSN")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    args = parser.parse_args(argv)
    if not args.control_plane:
        parser.error("--control-plane (or RANKSHARD_CONTROL_PLANE) is required")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s router[%(process)d] %(levelname)s %(message)s")
    try:
        asyncio.run(serve(args.control_plane, args.host, args.port))
    except RankshardError as exc:
        print(f"rankshard router: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
