"""In-process micro-benchmark of what the robust request handling adds to every request (issue 9).

``python -m bench.request_checks`` times each per-request check on its own, in nanoseconds per call,
medians of ``--repeats`` runs: the header rules (X-Request-Id, X-Unit-Id), the Content-Type rule of
v2 endpoints, the retry budget's bookkeeping and the instance choice. The failure paths (retries,
warnings) cost nothing on a request that succeeds, so they are not on this list.
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit
from collections.abc import Callable

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from router.backends.retry_budget import RetryBudget
from router.backends.v2 import InstancePicker, V2Backend, V2Instance
from router.caller_headers import request_id_of, unit_id_of
from router.views import content_type_for

BODY = (
    b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}'
)


def _headers(**values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in values.items()}))


def cases() -> dict[str, Callable[[], object]]:
    with_ids = _headers(X_Request_Id="trace-0123456789abcdef", X_Unit_Id="user-12345")
    without = _headers()
    backend = V2Backend.__new__(V2Backend)
    backend.kind = "v2"
    budget = RetryBudget()
    picker = InstancePicker(lambda model: frozenset({"http://b:1"}))
    timeout = aiohttp.ClientTimeout(total=1)
    instances = [V2Instance(f"http://{h}:1", None, timeout=timeout) for h in "abc"]  # type: ignore[arg-type]
    return {
        "X-Request-Id given (validated, echoed)": lambda: request_id_of(with_ids),
        "X-Request-Id absent (generated)": lambda: request_id_of(without),
        "X-Unit-Id given (UTF-8, length)": lambda: unit_id_of(with_ids),
        "Content-Type application/json, v2": lambda: content_type_for(
            backend, "application/json", BODY
        ),
        "retry budget: count the request": budget.record_request,
        "instance choice (3 instances, warm map)": lambda: picker.choose("m", instances, now=0.0),
    }


def measure(repeats: int = 5, number: int = 200_000) -> dict[str, float]:
    """ns per call for each case, the median of ``repeats`` runs of ``number`` calls."""
    results: dict[str, float] = {}
    for name, call in cases().items():
        # CPU time, not wall time: on a shared machine other processes would count otherwise.
        runs = timeit.repeat(call, repeat=repeats, number=number, timer=time.process_time)
        results[name] = statistics.median(runs) / number * 1e9
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.request_checks", description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--number", type=int, default=200_000)
    args = parser.parse_args(argv)
    print("| per-request check | ns per call (median) |")
    print("|---|--:|")
    for name, ns in measure(args.repeats, args.number).items():
        print(f"| {name} | {ns:.0f} |")


if __name__ == "__main__":
    main()
