"""``python -m tenancy check DIR`` and ``python -m tenancy schema OUT``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tenancy.loader import load_directory
from tenancy.schema import write
from tenancy.text import DefaultsHelpFormatter, plural


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tenancy", description=__doc__, formatter_class=DefaultsHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser(
        "check", help="validate a config directory", formatter_class=DefaultsHelpFormatter
    )
    check.add_argument("directory", type=Path, help="holds endpoints.yaml and tenants/")
    schema = sub.add_parser(
        "schema", help="write the JSON Schemas of both files", formatter_class=DefaultsHelpFormatter
    )
    schema.add_argument(
        "out", type=Path, nargs="?", default=Path("schema"), help="folder (default: %(default)s)"
    )
    args = parser.parse_args(argv)

    if args.command == "schema":
        for path in write(args.out):
            print(path)
        return 0
    endpoints, tenants, issues = load_directory(args.directory)
    if issues:
        for issue in issues:
            print(issue)
        return 1
    print(
        f"{args.directory}: ok ({plural(len(endpoints), 'endpoint')}, {plural(len(tenants), 'tenant')})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
