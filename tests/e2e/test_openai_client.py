"""End to end with the official openai client against the real server on the embedded model."""

from __future__ import annotations

from openai import OpenAI

from ..support.servers import MODEL_ID

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8,"


def test_models_lists_the_served_model(client: OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert ids == [MODEL_ID]


def test_chat_answers_a_plain_question_with_text(client: OpenAI) -> None:
    response = client.chat.completions.create(model=MODEL_ID, messages=QUESTION, max_tokens=24, temperature=0)
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    # An empty answer is the symptom of a wrong chat template (Gemma under Llama-2's format).
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert response.model == MODEL_ID
    assert response.id.startswith("chatcmpl-")


def test_max_tokens_gives_length_and_exact_usage(client: OpenAI) -> None:
    response = client.chat.completions.create(model=MODEL_ID, messages=QUESTION, max_tokens=5, temperature=0)
    assert response.choices[0].finish_reason == "length"
    usage = response.usage
    assert usage is not None
    assert usage.completion_tokens == 5
    assert usage.prompt_tokens > 5
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_max_completion_tokens_is_honoured(client: OpenAI) -> None:
    response = client.chat.completions.create(model=MODEL_ID, messages=QUESTION, max_completion_tokens=3, temperature=0)
    assert response.usage is not None and response.usage.completion_tokens == 3
    assert response.choices[0].finish_reason == "length"


def test_stop_sequence_ends_generation_and_is_not_returned(client: OpenAI) -> None:
    free = client.completions.create(model=MODEL_ID, prompt=COUNTING, max_tokens=12, temperature=0)
    text = free.choices[0].text
    assert " 10" in text, f"the model should continue counting: {text!r}"
    stopped = client.completions.create(model=MODEL_ID, prompt=COUNTING, max_tokens=12, temperature=0, stop=[" 10"])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.index(" 10")]


def test_stop_sequence_split_across_tokens(client: OpenAI) -> None:
    free = client.completions.create(model=MODEL_ID, prompt=COUNTING, max_tokens=12, temperature=0).choices[0].text
    stop = "9, 1"  # spans several tokens: "9", ",", " ", "1"
    assert stop in free
    stopped = client.completions.create(model=MODEL_ID, prompt=COUNTING, max_tokens=12, temperature=0, stop=stop)
    assert stopped.choices[0].text == free[: free.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_streamed_chat_equals_non_streamed_at_temperature_zero(client: OpenAI) -> None:
    kwargs = {"model": MODEL_ID, "messages": QUESTION, "max_tokens": 24, "temperature": 0}
    whole = client.chat.completions.create(**kwargs).choices[0].message.content  # type: ignore[call-overload]
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))  # type: ignore[call-overload]
    assert chunks[0].choices[0].delta.role == "assistant"
    joined = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert joined == whole
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 24


def test_streamed_text_completion_equals_non_streamed(client: OpenAI) -> None:
    whole = client.completions.create(model=MODEL_ID, prompt=COUNTING, max_tokens=10, temperature=0)
    parts = list(client.completions.create(model=MODEL_ID, prompt=COUNTING, max_tokens=10, temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in parts) == whole.choices[0].text
    assert [p.choices[0].finish_reason for p in parts if p.choices[0].finish_reason] == ["length"]


def test_seed_makes_sampling_repeatable(client: OpenAI) -> None:
    kwargs = {"model": MODEL_ID, "messages": QUESTION, "max_tokens": 16, "temperature": 1.0, "seed": 1234}
    first = client.chat.completions.create(**kwargs).choices[0].message.content  # type: ignore[call-overload]
    second = client.chat.completions.create(**kwargs).choices[0].message.content  # type: ignore[call-overload]
    assert first == second


def test_sampling_parameters_are_accepted(client: OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL_ID,
        messages=QUESTION,
        max_tokens=8,
        temperature=0.7,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        seed=7,
        extra_body={"top_k": 20, "min_p": 0.1, "repeat_penalty": 1.1},
    )
    assert response.usage is not None and response.usage.completion_tokens >= 1


def test_system_message_reaches_the_model(client: OpenAI) -> None:
    """Gemma has no system role; the system text is folded into the first user turn, not dropped."""
    base = {"model": MODEL_ID, "max_tokens": 1, "temperature": 0}
    plain = client.chat.completions.create(messages=QUESTION, **base)  # type: ignore[call-overload]
    with_system = client.chat.completions.create(
        messages=[{"role": "system", "content": "You answer in one word."}, *QUESTION], **base
    )  # type: ignore[call-overload]
    assert with_system.usage.prompt_tokens > plain.usage.prompt_tokens + 5


def test_timings_report_where_the_time_went(server: object, client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL_ID, messages=QUESTION, max_tokens=8, temperature=0
    )
    assert float(raw.headers["x-generated-tokens-per-second"]) > 0
    assert float(raw.headers["x-prompt-tokens-per-second"]) >= 0
    body = raw.parse()
    timings = body.model_extra["timings"]  # type: ignore[index]
    assert timings["predicted_n"] == 8 and timings["predicted_per_second"] > 0
