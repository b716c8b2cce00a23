"""What the REST adapter serves from: the parts the composition root hands over (it builds none itself)."""

from __future__ import annotations

from dataclasses import dataclass

from runed.core.config import Config
from runed.pipeline.context import Deps
from runed.pipeline.stages import Pipeline
from runed.store.base import Store


@dataclass(frozen=True)
class Backend:
    """The shared pipeline and what the operations endpoints read; one per rest role process."""

    config: Config  # server settings, and the data dir the readiness markers live in
    store: Store  # readiness (the store answers) and the instance gauges of /metrics
    pipeline: Pipeline  # every API call goes through it, as over gRPC
    deps: Deps  # what handlers get in their call context
