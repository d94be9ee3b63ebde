"""Completion logic, free of HTTP: validate a request against the engine, run it, shape the answer.

Routes hand a parsed request here and get back a JSON body or SSE lines; tests can drive this
with a fake engine.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..base.errors import ContextLengthExceeded, InternalError, InvalidRequest, ModelNotFound
from ..base.requestlog import RequestRecord
from ..base.schemas import ChatCompletionRequest, CompletionRequest, Endpoint, SamplingFields
from ..base.sse import DONE, sse
from ..engine.json_grammar import UnsupportedSchema, json_object_grammar, schema_grammar
from ..engine.types import Engine, Event, Failed, Finished, GenerationRequest, SamplingParams, TextDelta, TokenLogprob


@dataclass
class Prepared:
    endpoint: Endpoint
    request: GenerationRequest
    model: str
    include_usage: bool
    id: str
    created: int


def response_grammar(body: ChatCompletionRequest) -> str | None:
    """The GBNF that ``response_format`` asks for; an unsupported schema is a 400 naming the construct."""
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return json_object_grammar()
    assert fmt.json_schema is not None
    try:
        grammar = schema_grammar(fmt.json_schema.json_schema)
    except UnsupportedSchema as exc:
        raise InvalidRequest(f"response_format: {exc}", param="response_format") from exc
    # Imported here: unit tests drive this module with a fake engine and without llama.cpp.
    from ..engine.sampling import grammar_parses

    if not grammar_parses(grammar):
        raise InvalidRequest(
            "response_format: the schema cannot be enforced (a reference that loops back on itself "
            "before any character, for instance)",
            param="response_format",
        )
    return grammar


def _token_text(token: bytes) -> str:
    return token.decode("utf-8", errors="replace")


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    """OpenAI's ``choices[].logprobs`` of a chat completion (or of one stream chunk)."""
    return {
        "content": [
            {
                "token": _token_text(e.token),
                "logprob": e.logprob,
                "bytes": list(e.token),
                "top_logprobs": [{"token": _token_text(t), "logprob": v, "bytes": list(t)} for t, v in e.top],
            }
            for e in entries
        ],
        "refusal": None,
    }


def text_logprobs(entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """The legacy completions' ``logprobs``; ``offset`` is where the first token's text starts
    (in characters of the completion)."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(_token_text(e.token))
    return {
        "tokens": [_token_text(e.token) for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{_token_text(t): v for t, v in e.top} for e in entries],
        "text_offset": offsets,
    }


def timings(done: Finished) -> dict[str, float | int]:
    evaluated = done.prompt_tokens - done.cached_tokens
    return {
        "prompt_n": evaluated,
        "prompt_ms": round(done.prompt_ms, 2),
        "prompt_per_second": round(evaluated / (done.prompt_ms / 1000), 2) if done.prompt_ms > 0 else 0.0,
        "predicted_n": done.completion_tokens,
        "predicted_ms": round(done.predicted_ms, 2),
        "predicted_per_second": (
            round(done.completion_tokens / (done.predicted_ms / 1000), 2) if done.predicted_ms > 0 else 0.0
        ),
        "cache_n": done.cached_tokens,
        "queued_ms": round(done.queued_ms, 2),
        # Speculative decoding, as llama-server names them: draft tokens verified and kept.
        "draft_n": done.draft_tokens,
        "draft_n_accepted": done.draft_accepted,
    }


def timing_headers(done: Finished) -> dict[str, str]:
    t = timings(done)
    return {
        "X-Prompt-Tokens-Per-Second": str(t["prompt_per_second"]),
        "X-Generated-Tokens-Per-Second": str(t["predicted_per_second"]),
        "X-Time-To-First-Token-Ms": str(round(done.queued_ms + done.prompt_ms, 1)),
        "X-Cached-Tokens": str(done.cached_tokens),
    }


def usage(done: Finished) -> dict[str, Any]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
    }


ANY_MODEL = "*"  # in MODEL_ALIASES: answer whatever name the client sends


class CompletionService:
    def __init__(
        self,
        engine: Engine,
        *,
        accepted_models: set[str],
        request_timeout: float,
        clamp_max_tokens: bool = True,
        max_messages: int = 1000,
    ) -> None:
        self.engine = engine
        self.accepted_models = accepted_models
        self.request_timeout = request_timeout
        self.clamp_max_tokens = clamp_max_tokens
        self.max_messages = max_messages

    # -- preparing -------------------------------------------------------------------------

    def prepare_chat(self, body: ChatCompletionRequest) -> Prepared:
        """Check, render and tokenize; blocking (long for a long conversation), so routes run it in a thread."""
        self._check_model(body.model)
        if len(body.messages) > self.max_messages:
            raise InvalidRequest(
                f"too many messages: {len(body.messages)}; this server takes at most {self.max_messages} "
                "(MAX_MESSAGES)",
                param="messages",
            )
        messages = [{"role": _role(m.role), "content": m.text()} for m in body.messages]
        try:
            prompt = self.engine.chat_prompt(messages)
        except ValueError as exc:  # raise_exception() in a chat template
            raise InvalidRequest(str(exc), param="messages") from exc
        return self._prepare("chat", body, prompt, body.token_limit(), "messages", response_grammar(body))

    def prepare_text(self, body: CompletionRequest) -> Prepared:
        self._check_model(body.model)
        raw = body.prompt
        if isinstance(raw, str):
            prompt = self.engine.text_prompt(raw)
        elif isinstance(raw[0], str):
            prompt = self.engine.text_prompt(str(raw[0]))
        else:
            prompt = [int(t) for t in raw]
            vocab = self.engine.info.n_vocab
            if any(not 0 <= t < vocab for t in prompt):
                raise InvalidRequest(f"prompt token ids must be between 0 and {vocab - 1}", param="prompt")
        return self._prepare("text", body, prompt, body.token_limit(), "prompt")

    def _check_model(self, name: str) -> None:
        if name not in self.accepted_models and ANY_MODEL not in self.accepted_models:
            served = self.engine.info.model_id
            raise ModelNotFound(f"the model '{name}' does not exist here; this server serves '{served}'", param="model")

    def _prepare(
        self,
        endpoint: Endpoint,
        body: SamplingFields,
        prompt: list[int],
        limit: int | None,
        param: str,
        grammar: str | None = None,
    ) -> Prepared:
        context = self.engine.info.context_size
        if len(prompt) >= context:
            raise ContextLengthExceeded(
                f"this model's maximum context length is {context} tokens, but the {param} take "
                f"{len(prompt)} tokens; shorten them",
                param=param,
            )
        room = context - len(prompt)
        if limit is not None and limit > room and not self.clamp_max_tokens:
            raise ContextLengthExceeded(
                f"this model's maximum context length is {context} tokens; you requested {len(prompt) + limit} "
                f"tokens ({len(prompt)} in the {param}, {limit} for the completion); lower max_tokens or "
                "shorten the prompt",
                param="max_tokens",
            )
        biases = body.token_biases()
        vocab = self.engine.info.n_vocab
        if any(not 0 <= token < vocab for token in biases):
            raise InvalidRequest(f"logit_bias token ids must be between 0 and {vocab - 1}", param="logit_bias")
        timeout = min(body.timeout or self.request_timeout, self.request_timeout)
        request = GenerationRequest(
            prompt=prompt,
            max_tokens=min(limit, room) if limit is not None else room,
            sampling=SamplingParams(
                temperature=body.temperature,
                top_p=body.top_p,
                top_k=body.top_k,
                min_p=body.min_p,
                presence_penalty=body.presence_penalty,
                frequency_penalty=body.frequency_penalty,
                repeat_penalty=body.repeat_penalty,
                seed=body.seed,
                # -100 bans a token outright, as OpenAI documents, rather than only making it unlikely.
                logit_bias=tuple((t, -math.inf if b <= -100 else b) for t, b in sorted(biases.items())),
                grammar=grammar,
            ),
            stop=body.stop_list(),
            logprobs=body.logprobs_wanted(),
            deadline=time.monotonic() + timeout,
        )
        prefix = "chatcmpl-" if endpoint == "chat" else "cmpl-"
        # Responses name the model that answered, whatever name the client asked for (as OpenAI does).
        model = self.engine.info.model_id
        return Prepared(endpoint, request, model, body.include_usage, prefix + uuid.uuid4().hex, int(time.time()))

    # -- running ---------------------------------------------------------------------------

    def start(self, prepared: Prepared) -> AsyncGenerator[Event, None]:
        return self.engine.start(prepared.request)

    async def collect(
        self, prepared: Prepared, events: AsyncGenerator[Event, None], record: RequestRecord
    ) -> tuple[dict[str, Any], Finished]:
        parts: list[str] = []
        entries: list[TokenLogprob] | None = None if prepared.request.logprobs is None else []
        async for event in events:
            if isinstance(event, TextDelta):
                record.first_token()
                parts.append(event.text)
                if entries is not None and event.logprobs:
                    entries.extend(event.logprobs)
            elif isinstance(event, Failed):
                raise event.error
            else:
                record.finished(event)
                return self._body(prepared, "".join(parts), event, entries), event
        raise InternalError("the engine ended the request without finishing it")

    def _body(
        self, prepared: Prepared, text: str, done: Finished, entries: list[TokenLogprob] | None
    ) -> dict[str, Any]:
        if prepared.endpoint == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": done.finish_reason,
                "logprobs": None if entries is None else chat_logprobs(entries),
            }
            obj = "chat.completion"
        else:
            logprobs = None if entries is None else text_logprobs(entries, 0)
            choice = {"index": 0, "text": text, "finish_reason": done.finish_reason, "logprobs": logprobs}
            obj = "text_completion"
        return {
            "id": prepared.id,
            "object": obj,
            "created": prepared.created,
            "model": prepared.model,
            "choices": [choice],
            "usage": usage(done),
            "timings": timings(done),
        }

    async def stream(
        self, prepared: Prepared, first: Event, events: AsyncGenerator[Event, None], record: RequestRecord
    ) -> AsyncIterator[bytes]:
        """SSE lines: role chunk, content deltas, finish chunk, optional usage chunk, ``[DONE]``.

        An error after the stream started becomes one ``data: {"error": ...}`` event before
        ``[DONE]``; the HTTP status is already sent by then.
        """
        try:
            if prepared.endpoint == "chat":
                yield sse(self._chunk(prepared, {"role": "assistant", "content": ""}, None))
            event: Event | None = first
            offset = 0  # where the next token's text starts, for text completions' text_offset
            while event is not None:
                if isinstance(event, TextDelta):
                    record.first_token()
                    chunk = self._chunk(prepared, event.text, None)
                    if event.logprobs is not None:
                        chunk["choices"][0]["logprobs"] = (
                            chat_logprobs(event.logprobs)
                            if prepared.endpoint == "chat"
                            else text_logprobs(event.logprobs, offset)
                        )
                        offset += sum(len(_token_text(e.token)) for e in event.logprobs)
                    yield sse(chunk)
                elif isinstance(event, Failed):
                    record.failed(event.error)
                    yield sse(event.error.body())
                    break
                else:
                    record.finished(event)
                    final = self._chunk(prepared, None if prepared.endpoint == "chat" else "", event.finish_reason)
                    final["timings"] = timings(event)
                    yield sse(final)
                    if prepared.include_usage:
                        yield sse(self._usage_chunk(prepared, event))
                    break
                event = await anext(events, None)
            yield DONE
        finally:
            await events.aclose()

    def _chunk(self, prepared: Prepared, delta: Any, finish_reason: str | None) -> dict[str, Any]:
        if prepared.endpoint == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta if isinstance(delta, dict) else ({} if delta is None else {"content": delta}),
                "finish_reason": finish_reason,
                "logprobs": None,
            }
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish_reason, "logprobs": None}
            obj = "text_completion"
        chunk: dict[str, Any] = {
            "id": prepared.id,
            "object": obj,
            "created": prepared.created,
            "model": prepared.model,
            "choices": [choice],
        }
        if prepared.include_usage:
            chunk["usage"] = None
        return chunk

    def _usage_chunk(self, prepared: Prepared, done: Finished) -> dict[str, Any]:
        chunk = self._chunk(prepared, None, None)
        chunk["choices"] = []
        chunk["usage"] = usage(done)
        return chunk


def _role(role: str) -> str:
    # OpenAI's newer "developer" role plays the part of "system" for these models.
    return "system" if role == "developer" else role
