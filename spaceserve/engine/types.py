"""What goes into the engine and what comes out of it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ..errors import APIError
from .sampling import SamplingParams

FinishReason = Literal["stop", "length"]


@dataclass
class TextDelta:
    text: str


@dataclass
class Finished:
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    queued_ms: float
    prompt_ms: float
    predicted_ms: float
    # Why generation ended early, when it was not max_tokens/stop (e.g. the deadline).
    note: str | None = None


@dataclass
class Failed:
    error: APIError


Event = TextDelta | Finished | Failed


@dataclass
class GenerationRequest:
    prompt: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: list[str] = field(default_factory=list)
    deadline: float = float("inf")  # time.monotonic() value
    emit: Callable[[Event], None] = lambda _event: None
    enqueued_at: float = field(default_factory=time.monotonic)
    # Set from any thread; the scheduler frees the sequence at its next step.
    cancelled: bool = False
