"""CPU accounting around a measured run: how much CPU each of our processes used, and how much went
to processes that are not part of the benchmark (the noise on a shared machine).

"Outside the benchmark" includes Redis, which serves the (e) runs a little. Per-request CPU of the
process in the middle (proxy or router) hardly depends on what else runs on the machine, so it backs
up the req/s numbers when the machine is busy.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (0.0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy_s() -> float:
    """CPU seconds all CPUs spent not idle since boot (``/proc/stat``; 0.0 where unavailable)."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, first[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICK


def _own_s() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # only reaped children: the load generator
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


@dataclass(frozen=True, slots=True)
class CpuUsage:
    elapsed_s: float
    servers_s: dict[str, float]  # server name -> CPU seconds during the run
    loadgen_s: float
    foreign_s: float  # everything else on the machine
    ncpu: int

    @property
    def foreign_share(self) -> float:
        """Share of the machine's capacity used by processes outside the benchmark."""
        return max(0.0, self.foreign_s) / (self.elapsed_s * self.ncpu) if self.elapsed_s else 0.0


class CpuMeter:
    def __init__(self, servers: dict[str, int]) -> None:
        self.servers = servers
        self.ncpu = os.cpu_count() or 1  # /proc/stat counts every CPU of the machine
        self._start: tuple[float, float, dict[str, float], tuple[float, float]] | None = None

    def start(self) -> None:
        pids = {name: process_cpu_s(pid) for name, pid in self.servers.items()}
        self._start = (time.monotonic(), machine_busy_s(), pids, _own_s())

    def stop(self) -> CpuUsage:
        assert self._start is not None, "start() first"
        t0, busy0, pids0, (self0, kids0) = self._start
        servers = {n: process_cpu_s(p) - pids0[n] for n, p in self.servers.items()}
        self1, kids1 = _own_s()
        busy = machine_busy_s() - busy0
        loadgen = kids1 - kids0
        foreign = busy - sum(servers.values()) - loadgen - (self1 - self0)
        return CpuUsage(time.monotonic() - t0, servers, loadgen, foreign, self.ncpu)
