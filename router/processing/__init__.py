"""Pre/post-processing pipelines, shadow traffic, fallback, ensembles and dynamic model selection.

Config lives in ``tenancy/processing.py``. This package's top level exports only the interface custom
code implements (``router/processing/interface.py``), so importing it from a custom step is light;
the router compiles a tenant's processing with ``router.processing.flow.compile_processing``.
"""

from router.processing.interface import (
    AggregateContext,
    Json,
    MemberResult,
    StepContext,
    StepRejected,
)

__all__ = ["AggregateContext", "Json", "MemberResult", "StepContext", "StepRejected"]
