"""The completion service without HTTP or llama.cpp: a scripted engine, the SSE lines it turns into,
and the refusals it makes before the engine is asked (unknown model, prompt too long)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator

import pytest

from spaceserve.base.errors import APIError, ContextLengthExceeded, InternalError, ModelNotFound
from spaceserve.base.requestlog import RequestRecord
from spaceserve.base.schemas import DEFAULT_MIN_P, DEFAULT_TOP_K, ChatCompletionRequest, CompletionRequest
from spaceserve.engine.types import EngineInfo, Event, Failed, Finished, GenerationRequest, TextDelta, TokenLogprob
from spaceserve.model.service import CompletionService

pytestmark = pytest.mark.anyio
CONTEXT = 64


class ScriptedEngine:
    """One token per word of the prompt; ``start`` plays back ``script`` whatever the request."""

    def __init__(self, script: list[Event]) -> None:
        self.info = EngineInfo("served-model", CONTEXT, threads=1, slots=1, chat_template="test", n_vocab=100)
        self.script = script
        self.requests: list[GenerationRequest] = []

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        return self.text_prompt(" ".join(m["content"] for m in messages))

    def text_prompt(self, prompt: str) -> list[int]:
        return [1] * max(1, len(prompt.split()))

    async def start(self, request: GenerationRequest) -> AsyncGenerator[Event, None]:
        self.requests.append(request)
        for event in self.script:
            yield event

    active = 0
    queued = 0

    def warm_up(self) -> None:
        pass

    def close(self) -> None:
        pass


def finished(reason: str = "stop", completion: int = 2) -> Finished:
    return Finished(reason, 3, completion, 0, queued_ms=1.0, prompt_ms=2.0, predicted_ms=4.0)  # type: ignore[arg-type]


def service(
    script: list[Event], accepted: set[str] | None = None, *, clamp: bool = True
) -> tuple[CompletionService, ScriptedEngine]:
    engine = ScriptedEngine(script)
    svc = CompletionService(
        engine, accepted_models=accepted or {"served-model"}, request_timeout=60, clamp_max_tokens=clamp
    )
    return svc, engine


def chat(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "served-model", "messages": [{"role": "user", "content": "say hi"}], **fields}
    )


async def stream_events(svc: CompletionService, body: ChatCompletionRequest) -> list[dict[str, object]]:
    prepared = svc.prepare_chat(body)
    events = svc.start(prepared)
    first = await anext(events)
    lines = [line async for line in svc.stream(prepared, first, events, RequestRecord("r"))]
    assert lines[-1] == b"data: [DONE]\n\n"
    assert all(line.startswith(b"data: ") and line.endswith(b"\n\n") for line in lines)
    return [json.loads(line[6:]) for line in lines[:-1]]


async def test_chat_stream_chunks_come_in_openai_order_with_a_usage_chunk_last() -> None:
    svc, _ = service([TextDelta("Hel"), TextDelta("lo"), finished()])
    chunks = await stream_events(svc, chat(stream=True, stream_options={"include_usage": True}))
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]  # type: ignore[index]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo"}, {}]
    reasons = [c["choices"][0]["finish_reason"] for c in chunks[:-1]]  # type: ignore[index]
    assert reasons == [None, None, None, "stop"]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "total_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert {c["model"] for c in chunks} == {"served-model"}
    assert len({c["id"] for c in chunks}) == 1


async def test_an_error_after_the_first_chunk_is_an_error_event_then_done() -> None:
    failure = InternalError("generation failed inside the engine")
    svc, _ = service([TextDelta("partial"), Failed(failure)])
    chunks = await stream_events(svc, chat(stream=True))
    assert chunks[1]["choices"][0]["delta"] == {"content": "partial"}  # type: ignore[index]
    assert chunks[-1] == failure.body()
    assert chunks[-1]["error"]["type"] == "server_error"  # type: ignore[index]
    assert not any(c.get("choices", [{}])[0].get("finish_reason") for c in chunks if "choices" in c)  # type: ignore[union-attr, index]


async def test_non_streamed_body_joins_the_text_and_raises_an_engine_failure() -> None:
    svc, _ = service([TextDelta("a"), TextDelta("b"), finished("length")])
    prepared = svc.prepare_chat(chat())
    body, _ = await svc.collect(prepared, svc.start(prepared), RequestRecord("r"))
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "ab"}
    assert body["choices"][0]["finish_reason"] == "length"

    svc, _ = service([Failed(InternalError("boom"))])
    prepared = svc.prepare_chat(chat())
    with pytest.raises(APIError, match="boom"):
        await svc.collect(prepared, svc.start(prepared), RequestRecord("r"))


async def test_text_stream_uses_text_completion_chunks() -> None:
    svc, _ = service([TextDelta("x"), finished()])
    prepared = svc.prepare_text(CompletionRequest.model_validate({"model": "served-model", "prompt": "p"}))
    events = svc.start(prepared)
    lines = [line async for line in svc.stream(prepared, await anext(events), events, RequestRecord("r"))]
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert [c["object"] for c in chunks] == ["text_completion", "text_completion"]
    assert [c["choices"][0]["text"] for c in chunks] == ["x", ""]


def test_unknown_model_is_refused_naming_the_served_one() -> None:
    svc, engine = service([])
    with pytest.raises(ModelNotFound, match="served-model") as caught:
        svc.prepare_chat(chat(model="gpt-4o"))
    assert caught.value.status_code == 404
    assert caught.value.param == "model"
    assert engine.requests == []


def test_a_prompt_longer_than_the_context_names_both_numbers() -> None:
    svc, _ = service([])
    with pytest.raises(ContextLengthExceeded) as caught:
        svc.prepare_chat(chat(messages=[{"role": "user", "content": "w " * 100}]))
    message = caught.value.args[0]
    assert str(CONTEXT) in message and "100" in message
    assert caught.value.param == "messages"


def test_max_tokens_beyond_the_room_left_is_clamped_to_that_room() -> None:
    svc, _ = service([])
    assert svc.prepare_chat(chat(max_tokens=70)).request.max_tokens == CONTEXT - 2  # "say hi": 2 tokens
    assert svc.prepare_chat(chat(max_tokens=10)).request.max_tokens == 10


def test_strict_mode_refuses_max_tokens_beyond_the_room_naming_the_total() -> None:
    svc, _ = service([], clamp=False)
    with pytest.raises(ContextLengthExceeded, match="you requested 72 tokens") as caught:
        svc.prepare_chat(chat(max_tokens=70))
    assert caught.value.param == "max_tokens"


def test_the_wildcard_alias_accepts_any_model_and_answers_with_the_served_name() -> None:
    svc, _ = service([], accepted={"served-model", "*"})
    for name in ("deepseek-ai/DeepSeek-V3-0324:novita", "dummy", "https://example.hf.space"):
        assert svc.prepare_chat(chat(model=name)).model == "served-model"
    alias, _ = service([], accepted={"served-model", "coder"})
    assert alias.prepare_chat(chat(model="coder")).model == "served-model"
    with pytest.raises(ModelNotFound):
        alias.prepare_chat(chat(model="dummy"))


def test_a_request_without_top_k_or_min_p_gets_the_documented_defaults() -> None:
    svc, _ = service([])
    sampling = svc.prepare_chat(chat()).request.sampling
    assert (sampling.top_k, sampling.min_p) == (DEFAULT_TOP_K, DEFAULT_MIN_P) == (40, 0.05)
    explicit = svc.prepare_chat(chat(top_k=0, min_p=0)).request.sampling
    assert (explicit.top_k, explicit.min_p) == (0, 0.0)


async def test_request_features_reach_the_engine_request() -> None:
    svc, _ = service([finished()])
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    body = chat(
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}},
        logit_bias={"7": -100, "3": 2.5},
        logprobs=True,
        top_logprobs=4,
    )
    request = svc.prepare_chat(body).request
    assert request.sampling.grammar is not None and request.sampling.grammar.startswith("root ::= ")
    assert request.sampling.logit_bias == ((3, 2.5), (7, float("-inf")))
    assert request.logprobs == 4
    plain = svc.prepare_chat(chat()).request
    assert plain.sampling.grammar is None and plain.sampling.logit_bias == () and plain.logprobs is None
    assert svc.prepare_chat(chat(response_format={"type": "text"})).request.sampling.grammar is None


def test_unsupported_schema_and_unknown_token_ids_are_refused_before_the_engine() -> None:
    svc, engine = service([finished()])
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"not": {}}}}
    with pytest.raises(APIError) as caught:
        svc.prepare_chat(chat(response_format=fmt))
    assert caught.value.status_code == 400 and caught.value.param == "response_format"
    assert "'not'" in caught.value.message
    with pytest.raises(APIError) as caught:
        svc.prepare_chat(chat(logit_bias={"100": 1}))  # the scripted vocabulary has 100 tokens
    assert caught.value.param == "logit_bias"
    assert engine.requests == []


async def test_logprobs_are_shaped_as_openai_does() -> None:
    hi = TokenLogprob(b"Hi", -0.5, [(b"Hi", -0.5), (b"Yo", -1.5)])
    bang = TokenLogprob(b"!", -0.25, [(b"!", -0.25), (b".", -2.0)])
    svc, _ = service([TextDelta("Hi", [hi]), TextDelta("!", [bang]), finished()])
    prepared = svc.prepare_chat(chat(logprobs=True, top_logprobs=2))
    body, _ = await svc.collect(prepared, svc.start(prepared), RequestRecord("r"))
    content = body["choices"][0]["logprobs"]["content"]
    assert content[0] == {
        "token": "Hi",
        "logprob": -0.5,
        "bytes": [72, 105],
        "top_logprobs": [
            {"token": "Hi", "logprob": -0.5, "bytes": [72, 105]},
            {"token": "Yo", "logprob": -1.5, "bytes": [89, 111]},
        ],
    }
    text_body = CompletionRequest.model_validate({"model": "served-model", "prompt": "x", "logprobs": 2})
    svc, _ = service([TextDelta("Hi", [hi]), TextDelta("!", [bang]), finished()])
    prepared = svc.prepare_text(text_body)
    body, _ = await svc.collect(prepared, svc.start(prepared), RequestRecord("r"))
    assert body["choices"][0]["logprobs"] == {
        "tokens": ["Hi", "!"],
        "token_logprobs": [-0.5, -0.25],
        "top_logprobs": [{"Hi": -0.5, "Yo": -1.5}, {"!": -0.25, ".": -2.0}],
        "text_offset": [0, 2],
    }
