"""A failover drill's result as the drilled plane is told it (POST /drills): bounded and validated, so a
status page can show the last one."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MAX_EXPECTATIONS = 50


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ExpectationOutcome(_Frozen):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    passed: bool
    message: Annotated[str, Field(max_length=500)] = ""


class DrillResult(_Frozen):
    drill: Annotated[str, Field(min_length=1, max_length=200)]
    passed: bool
    finished_at: Annotated[float, Field(allow_inf_nan=False, ge=0)]
    expectations: Annotated[tuple[ExpectationOutcome, ...], Field(max_length=MAX_EXPECTATIONS)] = ()
    report: Annotated[str, Field(max_length=500)] = Field(default="", description="Where the runner wrote it")
