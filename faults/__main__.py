"""``make faults`` / ``python -m faults``: start the stack, run the matrix, print the table."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import handle_stop_signals
from faults.matrix import FULL, SMALL, main_exit, run_matrix, table
from faults.stack import open_stack


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def run(workdir: Path, small: bool) -> int:
    scale = SMALL if small else FULL
    started = time.monotonic()
    async with open_stack(workdir, log=log) as stack:
        rows = await run_matrix(stack, scale, log=log)
    print(table(rows))
    print(f"\n{len(rows) - 1} faults in {time.monotonic() - started:.0f} s; logs in {workdir}")
    return main_exit(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faults", description=__doc__)
    parser.add_argument("--small", action="store_true", help="the scale make test uses")
    parser.add_argument("--workdir", type=Path, default=None, help="logs and config (default: tmp)")
    args = parser.parse_args(argv)
    handle_stop_signals()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="warmroute-faults-"))
    return asyncio.run(run(workdir, args.small))


if __name__ == "__main__":
    raise SystemExit(main())
