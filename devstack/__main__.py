"""``python -m devstack run [--config DIR]``: the local stack of ``make run``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from devstack.docs import write as write_docs
from devstack.mlserver import repo_root
from devstack.stack import run
from tenancy.text import DefaultsHelpFormatter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser(
        "run",
        help="MLServer x2 + Redis + router + preloader",
        description="The local stack. Redis database: $WARMROUTE_RUN_REDIS_DB (default 15), "
        "emptied on start.",
        formatter_class=DefaultsHelpFormatter,
    )
    start.add_argument(
        "--config", type=Path, default=repo_root() / "examples" / "config", help="config served"
    )
    start.add_argument(
        "--state",
        type=Path,
        default=repo_root() / ".cache" / "devstack",
        help="logs and MLServer work folders",
    )
    docs = sub.add_parser(
        "docs",
        help="write the generated pages of docs/ (config and metrics reference)",
        formatter_class=DefaultsHelpFormatter,
    )
    docs.add_argument("out", type=Path, nargs="?", default=Path("docs"), help="folder")
    args = parser.parse_args(argv)
    if args.command == "docs":
        for path in write_docs(args.out):
            print(path)
        return 0
    return run(args.config, args.state)


if __name__ == "__main__":
    sys.exit(main())
