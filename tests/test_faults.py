"""The fault matrix (``make faults``) at a small scale: each fault's promises on the real stack.

Same scenarios as ``python -m faults``, fewer requests; only correctness is asserted (no 500, no
plain-text answer, no lost request where SPEC promises none, no cross-tenant call, every answer
one SPEC allows for its call). Timings stay in the ``make faults`` table.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from faults.load import drive
from faults.matrix import FAULTS, SMALL, Fault, baseline
from faults.stack import Stack, open_stack
from tests.conftest import MLServerPair

# One stack for the module (starting it is most of the cost); the faults run in order and each
# repairs what it broke (Redis restarted, the killed MLServer restarted empty).
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, mlserver_pair: MLServerPair
) -> AsyncIterator[Stack]:
    """The stack over the session's MLServers (repaired if an earlier test killed one)."""
    for instance in mlserver_pair:
        if instance.paused:
            instance.resume()
        if not instance.is_alive():
            instance.restart()
    async with open_stack(
        tmp_path_factory.mktemp("faults"), mlservers=list(mlserver_pair), log=lambda _: None
    ) as opened:
        # Lazy loads happen here, not under the fault.
        await drive(opened.router.url, [*opened.alpha(2), opened.beta()], count=6, max_s=60)
        yield opened


@pytest.mark.parametrize("fault", [baseline, *FAULTS], ids=lambda f: getattr(f, "__name__", "f"))
async def test_fault_keeps_its_promises(stack: Stack, fault: Fault) -> None:
    row = await fault(stack, SMALL)
    assert row.tally.sent > 0
    assert row.ok, f"{row.fault}: " + "; ".join(row.problems())
