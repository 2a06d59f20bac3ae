"""Hot reload: watch the config directory and swap in complete new snapshots.

Polling stat() is deliberate: it sees Kubernetes' ConfigMap update (an atomic ``..data`` symlink swap,
which inotify on the file paths misses) and costs microseconds per file. A file that turns invalid
keeps its last good version serving; the reload is reported as an error so operators see it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tenancy.loader import (
    ConfigIssue,
    FileStamp,
    Parsed,
    cross_check,
    read_directory,
    scan,
)
from tenancy.models import Endpoint, EndpointsFile, Tenant
from tenancy.snapshot import Snapshot

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """The config directory cannot serve at all (start-up)."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    changed: bool
    issues: tuple[ConfigIssue, ...]
    snapshot: Snapshot

    @property
    def ok(self) -> bool:
        return not self.issues


class ConfigStore:
    """Holds the serving Snapshot; ``current`` is one attribute read, safe mid-request."""

    def __init__(self, root: Path, *, on_reload: Callable[[ReloadOutcome], None] | None = None):
        self.root = root
        self.on_reload = on_reload
        self._cache: dict[str, Parsed] = {}
        self._stamps: dict[str, FileStamp | None] = {}
        self._lock = asyncio.Lock()
        self.current: Snapshot = Snapshot.build({}, {}, generation=0)
        self.last_issues: tuple[ConfigIssue, ...] = ()

    def load_initial(self) -> Snapshot:
        """Strict first load: any issue is fatal (bad config never starts a half-working service)."""
        snapshot, issues = self._build(previous=None)
        if issues:
            raise ConfigError(list(issues))
        self.current = snapshot
        return snapshot

    async def reload(self, *, force: bool = False) -> ReloadOutcome:
        """Re-read what changed (everything when forced) and swap; parsing runs off the loop."""
        async with self._lock:
            stamps = await asyncio.to_thread(scan, self.root)
            if not force and stamps == self._stamps:
                return ReloadOutcome(False, self.last_issues, self.current)
            snapshot, issues = await asyncio.to_thread(self._build, self.current)
            self.current = snapshot
            self.last_issues = issues
            outcome = ReloadOutcome(True, issues, snapshot)
        for issue in issues:
            log.warning("config reload problem: %s", issue)
        log.info(
            "config reloaded generation=%d tenants=%d issues=%d",
            snapshot.generation,
            len(snapshot.tenants),
            len(issues),
        )
        if self.on_reload is not None:
            self.on_reload(outcome)
        return outcome

    async def watch(self, interval_s: float = 0.5) -> None:
        """Reload whenever a file changes; runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.reload()
            except Exception:  # the watcher must outlive anything a reload meets
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                # Files are read behind a per-file boundary, so this is a bug or the disk: the
                # next change is still picked up.
                log.exception("config watch failed; will retry on the next change")

    def _build(self, previous: Snapshot | None) -> tuple[Snapshot, tuple[ConfigIssue, ...]]:
        self._stamps = scan(self.root)
        state = read_directory(self.root, self._cache)
        self._cache = {state.files[t]: p for t, p in state.tenants.items()}
        self._cache["endpoints.yaml"] = state.endpoints
        issues = list(state.issues())

        endpoints: Mapping[str, Endpoint]
        if isinstance(state.endpoints.value, EndpointsFile):
            endpoints = state.endpoints.value.endpoints
        elif previous is not None:
            endpoints = previous.endpoints  # keep the last good endpoints file
        else:
            endpoints = {}

        tenants: dict[str, Tenant] = {}
        for tenant_id, parsed in state.tenants.items():
            candidate = parsed.value if isinstance(parsed.value, Tenant) else None
            if candidate is not None:
                problems = cross_check(state.files[tenant_id], candidate, endpoints)
                issues.extend(problems)
                if problems:
                    candidate = None
            if candidate is None and previous is not None:
                old = previous.tenants.get(tenant_id)
                # Last good version keeps serving, if its endpoint still exists.
                if old is not None and old.endpoint in endpoints:
                    candidate = old
            if candidate is not None:
                tenants[tenant_id] = candidate
        generation = previous.generation + 1 if previous is not None else 1
        return Snapshot.build(endpoints, tenants, generation), tuple(issues)
