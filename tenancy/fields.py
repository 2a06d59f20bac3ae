"""Field types shared by both config files' models (one rule, one place)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+/-]{0,255}$"

# Model ids travel in URL paths (v2) and as SageMaker TargetModel (relative S3 keys such as
# "acme/intent-v3.tar.gz"), so they are restricted to characters both accept without escaping games.
ModelId = Annotated[str, StringConstraints(pattern=MODEL_ID_PATTERN)]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
Sha256Hex = Annotated[
    str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$", to_lower=True, strip_whitespace=True)
]
HttpUrl = Annotated[str, StringConstraints(pattern=r"^https?://[^\s/?#]+(:\d+)?/?$")]
PositiveMs = Annotated[int, Field(gt=0, le=3_600_000)]
