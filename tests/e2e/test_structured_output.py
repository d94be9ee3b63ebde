"""response_format on the real model: replies parse and validate, alone and beside free streams.

The grammars themselves are checked token by token against the model's real vocabulary: valid
instances pass whole (and may end there), invalid ones are cut off.
"""

from __future__ import annotations

import ctypes
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import jsonschema
import llama_cpp
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

from spaceserve.engine.json_grammar import json_object_grammar, schema_grammar

from ..support.servers import MODEL_ID, ServerProcess
from ..support.vocab import load_vocab, tokenize

FLAT_ENUM = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "enum": ["France", "Germany", "Italy"]},
        "population_millions": {"type": "integer", "minimum": 0},
    },
    "required": ["city", "country", "population_millions"],
    "additionalProperties": False,
}
NESTED_ARRAY = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 60},
        "steps": {
            "type": "array",
            "minItems": 2,
            "maxItems": 4,
            "items": {
                "type": "object",
                "properties": {
                    "n": {"type": "integer", "minimum": 1, "maximum": 9},
                    "text": {"type": "string", "maxLength": 50},
                },
                "required": ["n", "text"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["title", "steps"],
    "additionalProperties": False,
}
ANY_OF = {
    "type": "object",
    "properties": {
        "answer": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 30}, {"type": "null"}]},
        "sure": {"type": "boolean"},
    },
    "required": ["answer", "sure"],
    "additionalProperties": False,
}


class Pet(BaseModel):
    kind: Literal["cat", "dog", "bird"]
    name: str = Field(max_length=30)


class Owner(BaseModel):
    name: str = Field(max_length=30)
    age: int = Field(ge=0)
    pets: list[Pet] = Field(min_length=1, max_length=3)
    nickname: str | None = Field(default=None, max_length=20)


SCHEMAS = {
    "flat_enum": FLAT_ENUM,
    "nested_array": NESTED_ARRAY,
    "any_of": ANY_OF,
    "pydantic_defs": Owner.model_json_schema(),
}
PROMPTS = {
    "flat_enum": "Describe the capital of France as JSON.",
    "nested_array": "Give a short recipe for tea as JSON with numbered steps.",
    "any_of": "How many legs does a spider have? Answer as JSON.",
    "pydantic_defs": "Invent a pet owner with two pets, as JSON.",
}


def response_format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def ask(client: OpenAI, name: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": PROMPTS[name]}],
        response_format=response_format(name, SCHEMAS[name]),  # type: ignore[arg-type]
        max_tokens=kwargs.pop("max_tokens", 200),
        **kwargs,
    )


def assert_valid(name: str, response: Any) -> dict[str, Any]:
    choice = response.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    value = json.loads(choice.message.content)
    jsonschema.validate(value, SCHEMAS[name])
    return dict(value)


# -- the grammars against the real vocabulary ---------------------------------------------------


@pytest.fixture(scope="module")
def vocab(model_path: Path) -> Iterator[Any]:
    with load_vocab(model_path) as loaded:
        yield loaded


def grammar_takes(vocab: Any, grammar: str, text: str) -> bool:
    """Whether the grammar lets the tokens of ``text`` through, one by one, and then allows the end."""
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    assert sampler
    try:
        for token in [*tokenize(vocab, text), llama_cpp.llama_vocab_eos(vocab)]:
            cell = llama_cpp.llama_token_data(token, 0.0, 0.0)
            array = llama_cpp.llama_token_data_array(ctypes.pointer(cell), 1, -1, False)
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
            if cell.logit == float("-inf"):
                return False
            llama_cpp.llama_sampler_accept(sampler, token)
        return True
    finally:
        llama_cpp.llama_sampler_free(sampler)


@pytest.mark.parametrize(
    ("schema", "good", "bad"),
    [
        (
            FLAT_ENUM,
            [
                '{"city": "Paris", "country": "France", "population_millions": 2}',
                '{\n  "city": "Rome",\n  "country": "Italy",\n  "population_millions": 0\n}',
            ],
            [
                '{"city": "Paris", "country": "Spain", "population_millions": 2}',
                '{"city": "Paris"}',
                '{"city": "Paris", "country": "France", "population_millions": -1}',
                '{"city": "Paris", "country": "France", "population_millions": 2, "x": 1}',
            ],
        ),
        (
            NESTED_ARRAY,
            ['{"title": "Tea", "steps": [{"n": 1, "text": "boil"}, {"n": 2, "text": "pour"}]}'],
            [
                '{"title": "Tea", "steps": [{"n": 1, "text": "boil"}]}',
                '{"title": "Tea", "steps": [{"n": 10, "text": "a"}, {"n": 2, "text": "b"}]}',
                '{"title": "T", "steps": [' + ", ".join(['{"n": 1, "text": "a"}'] * 5) + "]}",
            ],
        ),
        (
            ANY_OF,
            ['{"answer": 8, "sure": true}', '{"answer": "eight", "sure": false}', '{"answer": null, "sure": true}'],
            ['{"answer": 8.5, "sure": true}', '{"answer": [8], "sure": true}'],
        ),
        (
            Owner.model_json_schema(),
            [
                '{"name": "Ann", "age": 30, "pets": [{"kind": "cat", "name": "Tom"}]}',
                '{"name": "Ann", "age": 30, "pets": [{"kind": "dog", "name": "Rex"}], "nickname": null}',
            ],
            [
                '{"name": "Ann", "age": 30, "pets": []}',
                '{"name": "Ann", "age": 30, "pets": [{"kind": "cow", "name": "A"}]}',
            ],
        ),
        ({"type": "string", "pattern": r"^[A-Z]{2}-\d{3}$"}, ['"AB-123"'], ['"ab-123"', '"AB-12"', '"AB-1234"']),
        ({"type": "string", "format": "date"}, ['"2024-02-29"'], ['"2024-13-01"', '"yesterday"']),
    ],
)
def test_grammar_takes_valid_instances_and_refuses_invalid_ones(
    vocab: Any, schema: Any, good: list[str], bad: list[str]
) -> None:
    grammar = schema_grammar(schema)
    for text in good:
        jsonschema.validate(json.loads(text), schema)
        assert grammar_takes(vocab, grammar, text), text
    for text in bad:
        assert not grammar_takes(vocab, grammar, text), text


def test_json_object_grammar_takes_objects_only(vocab: Any) -> None:
    grammar = json_object_grammar()
    assert grammar_takes(vocab, grammar, '{"a": [1, 2.5e3, "x", null, true, {"b": {}}]}')
    assert not grammar_takes(vocab, grammar, "[1, 2]")
    assert not grammar_takes(vocab, grammar, '{"a": 1} trailing')


# -- the server ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_reply_validates_against_the_schema(client: OpenAI, name: str) -> None:
    assert_valid(name, ask(client, name, temperature=0))


def test_parse_helper_with_a_pydantic_model(client: OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL_ID,
        messages=[{"role": "user", "content": PROMPTS["pydantic_defs"]}],
        response_format=Owner,
        max_tokens=300,
        temperature=0,
    )
    owner = completion.choices[0].message.parsed
    assert isinstance(owner, Owner)
    assert 1 <= len(owner.pets) <= 3


def test_json_object_mode_gives_a_json_object(client: OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Return a JSON object with the key ok set to true."}],
        response_format={"type": "json_object"},
        max_tokens=120,
        temperature=0,
        extra_body={"repeat_penalty": 1.3},  # this small model loops on keys otherwise
    )
    assert response.choices[0].finish_reason == "stop", response.choices[0].message.content
    assert isinstance(json.loads(response.choices[0].message.content or ""), dict)


def test_streamed_structured_reply_validates(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": PROMPTS["flat_enum"]}],
        response_format=response_format("flat_enum", FLAT_ENUM),  # type: ignore[arg-type]
        max_tokens=300,
        temperature=0,
        stream=True,
    )
    parts, reasons = [], []
    for chunk in stream:
        parts.append(chunk.choices[0].delta.content or "")
        reasons.append(chunk.choices[0].finish_reason)
    assert reasons[-1] == "stop"
    jsonschema.validate(json.loads("".join(parts)), FLAT_ENUM)


def test_max_tokens_cuts_a_structured_reply_with_length(client: OpenAI) -> None:
    response = ask(client, "nested_array", temperature=0, max_tokens=4)
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 4


def test_structured_replies_beside_concurrent_free_streams(server: ServerProcess, client: OpenAI) -> None:
    free_done: list[str] = []
    errors: list[BaseException] = []

    def free_stream(i: int) -> None:
        try:
            with httpx.stream(
                "POST",
                server.url + "/v1/completions",
                json={"model": MODEL_ID, "prompt": f"Story {i}: Once upon a time", "max_tokens": 80, "stream": True},
                timeout=120,
            ) as response:
                assert response.status_code == 200
                lines = [line for line in response.iter_lines() if line.startswith("data: ")]
            assert lines[-1] == "data: [DONE]"
            free_done.append(json.loads(lines[-2][6:])["choices"][0]["finish_reason"])
        except BaseException as exc:
            errors.append(exc)

    def structured(name: str) -> None:
        try:
            assert_valid(name, ask(client, name, temperature=0.7, seed=3))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=free_stream, args=(i,)) for i in range(2)]
    threads += [threading.Thread(target=structured, args=(name,)) for name in ("flat_enum", "pydantic_defs")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert len(free_done) == 2 and all(reason in ("stop", "length") for reason in free_done)


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        (
            {"type": "object", "properties": {"a": {"type": "string"}}, "patternProperties": {"^x": {}}},
            "patternProperties",
        ),
        ({"type": "object", "properties": {"a": {"type": "string", "pattern": "(?=x)y"}}}, "lookaround"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/Nope"}}}, "Nope"),
        ({"type": "string", "format": "email"}, "email"),
        ({"$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}]}}, "$ref": "#/$defs/A"}, "loops"),
    ],
)
def test_unsupported_schema_is_400_naming_it(server: ServerProcess, schema: dict[str, Any], named: str) -> None:
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Hi"}],
        "response_format": response_format("x", schema),
    }
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "response_format"
    assert named in error["message"]


@pytest.mark.parametrize(
    "fmt",
    [{"type": "json_schema"}, {"type": "yaml"}, {"type": "json_schema", "json_schema": {"schema": {}}}],
)
def test_malformed_response_format_is_400(server: ServerProcess, fmt: dict[str, Any]) -> None:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "response_format": fmt}
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith("response_format")
