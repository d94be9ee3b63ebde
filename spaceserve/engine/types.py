"""What goes into the engine and what comes out of it."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ..base.errors import APIError
from ..base.schemas import DEFAULT_MIN_P, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P

FinishReason = Literal["stop", "length"]


class ModelLoadError(Exception):
    """llama.cpp could not load the GGUF or build a context for it."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    top_k: int = DEFAULT_TOP_K
    min_p: float = DEFAULT_MIN_P
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    seed: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    grammar: str | None = None  # GBNF whose rule "root" the reply must match (response_format)

    @property
    def penalized(self) -> bool:
        return self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


@dataclass(frozen=True)
class EngineInfo:
    model_id: str
    context_size: int
    threads: int
    slots: int
    chat_template: str
    n_vocab: int
    kv_cache: str = ""  # how the KV cache is laid out, for /health


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token and its log-probability under the model (raw logits, log-softmax)."""

    token: bytes
    logprob: float
    top: list[tuple[bytes, float]]  # the best alternatives, best first (empty unless asked for)


@dataclass
class TextDelta:
    text: str
    # The tokens this text came from, only when the request asked for logprobs.
    logprobs: list[TokenLogprob] | None = None


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
    # Speculative decoding: draft tokens verified, and how many of them the model agreed with.
    draft_tokens: int = 0
    draft_accepted: int = 0


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
    # None: no logprobs; n >= 0: each token's logprob and its n best alternatives.
    logprobs: int | None = None
    deadline: float = float("inf")  # time.monotonic() value
    emit: Callable[[Event], None] = lambda _event: None
    enqueued_at: float = field(default_factory=time.monotonic)
    # Set from any thread; the scheduler frees the sequence at its next step.
    cancelled: bool = False


@dataclass(frozen=True)
class ThreadUse:
    now: int  # threads the last engine step ran with
    probes: int = 0  # times a neighbouring thread count was measured (ADAPTIVE_THREADS)
    switches: int = 0  # times it was faster and became the current count


class Engine(Protocol):
    """What the serving layer needs; the llama.cpp engine and unit-test fakes both provide it.

    Defined here, away from llama_cpp, so that the proxy (whose image has no llama.cpp) can share
    the server code.
    """

    info: EngineInfo

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]: ...

    def text_prompt(self, prompt: str) -> list[int]: ...

    def start(self, request: GenerationRequest) -> AsyncGenerator[Event, None]: ...

    @property
    def active(self) -> int: ...

    @property
    def queued(self) -> int: ...

    def thread_use(self) -> ThreadUse: ...

    def warm_up(self) -> None: ...

    def close(self) -> None: ...
