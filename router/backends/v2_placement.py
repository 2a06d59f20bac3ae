"""Which v2 instance serves a model when the preloader places models (SPEC "Placement", property 4).

- A model held somewhere (the published warm map) goes only to its holders, the one with the fewest
  outstanding requests (ties in round robin), skipping ejected ones while another is healthy; a retry
  after a failed connection goes to another holder, or, with none left, to the model's first-ranked
  other instance (an on-demand load there).
- A model held nowhere goes to ONE instance: the first in the model's rendezvous ranking
  (``router.placement.rank``, the order the preloader places by) with room under
  ``capacity.max_models``; this router's own recent on-demand loads count, so the next request finds
  the model where the first one loaded it.
- Before an on-demand load on an instance without room, ``make_room`` unloads one model the placement
  does not put there, least recently used first; with none to unload, the load is refused rather than
  pushing the instance past its capacity.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence

from router.backends.v2 import InstancePicker, V2Instance
from router.errors import Overloaded
from router.placement import rank
from router.warm_map import Holding

log = logging.getLogger(__name__)


class PlacementPicker(InstancePicker):
    """``choose(model, instances)`` for ``V2Backend``; ``make_room`` runs before an on-demand load."""

    def __init__(
        self,
        *,
        endpoint: str,
        warm: Callable[[str], frozenset[str]],
        holding: Callable[[str], Holding | None],
        capacity: Callable[[], int | None],
    ) -> None:
        super().__init__(warm)
        self._endpoint = endpoint
        self._placement_warm = warm
        self._holding = holding
        self._capacity = capacity
        self._spin = itertools.count()
        # url -> models this router loaded (unloaded) there that the warm map does not (still) list.
        self._loaded: dict[str, set[str]] = {}
        self._unloaded: dict[str, set[str]] = {}

    def choose(
        self,
        model: str,
        instances: Sequence[V2Instance],
        *,
        now: float,
        avoid: V2Instance | None = None,
    ) -> V2Instance | None:
        """The instance to try next (not ejected, when one is), or None when only ``avoid`` is."""
        candidates = [i for i in instances if i is not avoid]
        if not candidates:
            return None
        healthy = [i for i in candidates if i.ejected_until <= now] or candidates
        turn = next(self._spin)
        warm = self._placement_warm(model)
        if warm:
            holders = [i for i in healthy if i.url in warm]
            if holders:
                n = len(holders)
                if n == 1:
                    return holders[0]
                # Fewest outstanding requests; ties in round robin.
                return min((holders[(turn + k) % n] for k in range(n)), key=_outstanding)
        return self._cold_choice(model, healthy)

    def held(self, url: str) -> set[str]:
        """Models on ``url``: as published, plus this router's loads not published yet."""
        holding = self._holding(url)
        published = holding.models if holding is not None else frozenset()
        mine = self._loaded.get(url)
        if mine:
            mine -= published  # published now: the warm map speaks for them
        gone = self._unloaded.get(url)
        if gone:
            gone &= published  # no longer published: the warm map caught up
        return (set(published) - (gone or set())) | (mine or set())

    def _cold_choice(self, model: str, healthy: list[V2Instance]) -> V2Instance:
        by_url = {i.url: i for i in healthy}
        for url, models in self._loaded.items():
            if model in models and url in by_url:  # this router loaded it there a moment ago
                return by_url[url]
        ranking = rank(model, by_url)
        capacity = self._capacity()
        if capacity is not None:
            for url in ranking:
                if len(self.held(url)) < capacity:
                    return by_url[url]
        return by_url[ranking[0]]

    async def make_room(self, instance: V2Instance, model: str) -> None:
        """Unload one model outside the placement from ``instance`` if it is full (LRU first)."""
        capacity = self._capacity()
        held = self.held(instance.url)
        if capacity is not None and model not in held and len(held) >= capacity:
            holding = self._holding(instance.url)
            placed = holding.placed if holding is not None else frozenset()
            victims = sorted(held - placed, key=lambda m: (instance.last_used.get(m, 0.0), m))
            if not victims:
                raise Overloaded(
                    f"endpoint {self._endpoint!r}: instance {instance.url} is full of placed "
                    f"models (max_models {capacity}); {model!r} cannot be loaded there",
                    retry_after=1,
                )
            victim = victims[0]
            await instance.unload(victim)
            self._loaded.get(instance.url, set()).discard(victim)
            self._unloaded.setdefault(instance.url, set()).add(victim)
            log.info(
                "unloaded for room endpoint=%s instance=%s model=%s for=%s",
                self._endpoint,
                instance.url,
                victim,
                model,
            )
        self._loaded.setdefault(instance.url, set()).add(model)


def _outstanding(instance: V2Instance) -> int:
    return instance.outstanding
