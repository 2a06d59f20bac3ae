"""A list of steps compiled once per config snapshot, and run per request.

Failures become the router's errors, naming the step: in preprocess a refused payload is the
caller's 400 ``invalid_request``; in postprocess a failure is 502 ``upstream_error`` (the model's answer
did not fit); a step over its timeout is 504 ``upstream_timeout``.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor

import orjson

from router.errors import InvalidRequest, RouterError, UpstreamError, UpstreamTimeout
from router.metrics import RouterMetrics
from router.processing.custom import CustomStep, RequestInfo, StepTimedOut
from router.processing.interface import Json, Stage, StepRejected
from router.processing.payload import Encoded, Payload, Step, encode
from router.processing.steps_builtin import build_builtin
from tenancy.processing import CustomStep as CustomStepConfig
from tenancy.processing import StepConfig


def build_step(config: StepConfig, *, threads: Executor | None = None) -> Step:
    if isinstance(config, CustomStepConfig):
        return CustomStep(config, threads=threads)
    return build_builtin(config)


class Pipeline:
    """The steps of one stage (preprocess or postprocess) of one tenant or variant."""

    def __init__(
        self,
        tenant_id: str,
        stage: Stage,
        configs: Sequence[StepConfig],
        metrics: RouterMetrics,
        *,
        threads: Executor | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.stage = stage
        self.steps = tuple(build_step(c, threads=threads) for c in configs)
        self.metrics = metrics
        self._refused: type[RouterError] = (
            InvalidRequest if stage == "preprocess" else UpstreamError
        )
        self._verb = "rejected the input" if stage == "preprocess" else "failed"

    async def run(
        self,
        body: bytes,
        content_type: str,
        request: RequestInfo,
        *,
        deadline: float,
        parsed: Json | None = None,
    ) -> Encoded:
        """Run every step on ``body`` (or on ``parsed``, the body already parsed: a parsed JSON
        ``null`` passed as None is simply parsed again)."""
        if not self.steps:
            return Encoded(body, content_type)
        payload: Payload = Encoded(body, content_type) if parsed is None else parsed
        index = 0
        step = self.steps[0]
        try:
            for index, step in enumerate(self.steps):
                if isinstance(payload, Encoded) and not step.accepts_encoded:
                    payload = self._decode(payload)
                if step.inline:
                    payload = step.apply(payload)
                else:
                    assert isinstance(step, CustomStep)
                    payload = await step.run(payload, request, self.stage, index, deadline)
            return encode(payload)
        except StepRejected as exc:
            raise self._failed(index, step, "rejected", f"{self._verb}: {exc}") from None
        except orjson.JSONDecodeError as exc:
            what = "the body is not" if self.stage == "preprocess" else "the model's answer is not"
            raise self._failed(
                index, step, "rejected", f"needs JSON, but {what} JSON: {exc}"
            ) from None
        except orjson.JSONEncodeError as exc:
            raise self._failed(index, step, "error", f"returned what is not JSON: {exc}") from None
        except StepTimedOut as exc:
            self._count(index, step, "timeout")
            raise UpstreamTimeout(f"{self._name(index, step)} {exc}") from None

    @staticmethod
    def _decode(payload: Encoded) -> Payload:
        parsed: Payload = orjson.loads(payload.body)
        return parsed

    def _name(self, index: int, step: Step) -> str:
        return f"{self.stage} step {index} ({step.label})"

    def _count(self, index: int, step: Step, reason: str) -> None:
        self.metrics.step_failures.labels(
            self.tenant_id, self.stage, f"{index}:{step.label}", reason
        ).inc()

    def _failed(self, index: int, step: Step, reason: str, message: str) -> RouterError:
        self._count(index, step, reason)
        return self._refused(f"{self._name(index, step)} {message}")
