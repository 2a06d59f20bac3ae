"""Progressive rollout (SPEC.md "Progressive rollout").

- ``figures``: per-variant counts of one window and what they say (error rate, p95).
- ``decision``: the pure judge (hold, step, complete, fail) and the operator's actions.
- ``counter``: the hot path's local counts, drained by the controller.
- ``store``: the state and windows in Redis; one Lua script per decision, one slot per experiment.
- ``controller``: the loop that flushes, reads, judges and applies the weight on every replica.
- ``admin``: the admin routes.
"""
