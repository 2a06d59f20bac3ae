"""``python -m preloader --config DIR``: parse, install uvloop, run (or ``--once``: warm and exit)."""

from __future__ import annotations

import os
import sys

import uvloop
from aiohttp import web

from preloader.app import create_app
from preloader.engine import SidecarError
from preloader.once import run_once
from preloader.progress import Progress
from preloader.settings import parse_settings
from router.logs import setup_logging
from tenancy.store import ConfigError

EXIT_NOT_WARM = 1
EXIT_BAD_CONFIG = 2


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    setup_logging(os.environ.get("WARMROUTE_LOG_LEVEL", "INFO"))
    progress = Progress(sys.stderr)
    try:
        if settings.once:
            result = uvloop.run(run_once(settings, progress=progress))
            for failure in result.failures:
                print(failure.line(), flush=True)
            if not result.ok:
                for line in result.report():
                    print(line, flush=True)
            return 0 if result.ok else EXIT_NOT_WARM
        app = create_app(settings, progress=progress)
    except ConfigError as exc:
        print(f"invalid config in {settings.config_dir}:", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except SidecarError as exc:
        print(f"preloader: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout_s,
        access_log=None,
        loop=uvloop.new_event_loop(),
        print=lambda *a: print(*a, file=sys.stderr),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
