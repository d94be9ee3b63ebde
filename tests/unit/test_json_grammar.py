"""The JSON schema -> GBNF translator: what it accepts, what it refuses, and that llama.cpp parses it.

That the grammars accept exactly the right JSON is checked token by token against the real
vocabulary in tests/e2e/test_structured_output.py.
"""

from __future__ import annotations

from typing import Any

import llama_cpp
import pytest

from spaceserve.engine.json_grammar import UnsupportedSchema, json_object_grammar, schema_grammar

SUPPORTED: list[dict[str, Any]] = [
    {"type": "object", "properties": {"color": {"enum": ["red", "green"]}, "n": {"type": "integer"}}},
    {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 1, "maxItems": 3},
            "inner": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
        },
        "required": ["tags", "inner"],
        "additionalProperties": False,
    },
    {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "null"}]},
    {"type": ["string", "null"]},
    {"const": {"a": [1, "two", None]}},
    {"type": "string", "pattern": r"^[A-Z][a-z]{2,5}-\d+(\.\d+)?$"},
    {"type": "string", "pattern": r"[^0-9]+|x{3}"},
    {"type": "string", "format": "date-time"},
    {"type": "integer", "minimum": 1, "maximum": 10},
    {"type": "integer", "minimum": 0},
    {"type": "number", "minimum": 0},
    {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False},
    {"type": "object", "additionalProperties": {"type": "integer"}},
    {
        "$defs": {
            "Node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}
        },
        "$ref": "#/$defs/Node",
    },
    {"definitions": {"A": {"type": "string"}}, "allOf": [{"$ref": "#/definitions/A"}], "description": "annotated"},
]


def parses(grammar: str) -> bool:
    sampler = llama_cpp.llama_sampler_init_grammar(None, grammar.encode(), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


@pytest.mark.parametrize("schema", SUPPORTED)
def test_supported_schemas_give_a_grammar_llama_cpp_parses(schema: dict[str, Any]) -> None:
    grammar = schema_grammar(schema)
    assert grammar.startswith("root ::= ")
    assert parses(grammar), grammar


def test_a_broken_grammar_does_not_parse() -> None:
    # The check above can fail: llama.cpp refuses a grammar with an undefined rule.
    assert not parses("root ::= missing\n")


def test_json_object_grammar_parses() -> None:
    assert parses(json_object_grammar())


def test_optional_properties_keep_their_order_and_commas() -> None:
    grammar = schema_grammar(
        {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}, "c": {"type": "string"}}}
    )
    members = next(line for line in grammar.splitlines() if line.startswith("schema-members ::="))
    # All optional: start at a, at b, at c, or be empty.
    assert members.count("|") == 3
    assert '""' in members


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "object", "patternProperties": {"^x": {}}}, "patternProperties"),
        ({"not": {"type": "string"}}, "not"),
        ({"type": "string", "pattern": "(?=a)b"}, "lookaround"),
        ({"type": "string", "pattern": r"(a)\1"}, "\\1"),
        ({"type": "string", "format": "email"}, "email"),
        ({"type": "number", "maximum": 5.5}, "maximum"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
        ({"$ref": "https://example.com/schema"}, "$ref"),
        ({"$ref": "#/$defs/Missing"}, "Missing"),
        ({"allOf": [{"type": "string"}, {"maxLength": 3}]}, "allOf"),
        ({"type": "object", "properties": {"a": {}}, "required": ["b"]}, "'b'"),
        ({"type": "whatever"}, "whatever"),
        ({"type": "string", "maxLength": 100000}, "maxLength"),
        ([1, 2], "JSON object"),
    ],
)
def test_unsupported_constructs_are_refused_by_name(schema: Any, named: str) -> None:
    with pytest.raises(UnsupportedSchema) as caught:
        schema_grammar(schema)
    assert named in str(caught.value)


def test_enum_values_are_json_literals() -> None:
    grammar = schema_grammar({"enum": ['say "hi"', 3, None, True]})
    assert r'"\"say \\\"hi\\\"\""' in grammar
    assert '"3"' in grammar and '"null"' in grammar and '"true"' in grammar


def test_a_reference_loop_without_characters_does_not_parse() -> None:
    # The service turns this into a 400 (tests/e2e/test_structured_output.py).
    grammar = schema_grammar(
        {"$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}]}}, "$ref": "#/$defs/A"}
    )
    assert not parses(grammar)


def test_deep_nesting_is_refused() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(100):
        schema = {"type": "array", "items": schema}
    with pytest.raises(UnsupportedSchema, match="nested"):
        schema_grammar(schema)


def test_malformed_keywords_are_refused_not_crashed() -> None:
    for schema in ({"type": "object", "properties": {"a": {}}, "required": 5}, {"$defs": [1], "$ref": "#/$defs/A"}):
        with pytest.raises(UnsupportedSchema):
            schema_grammar(schema)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "format": ["date"]},
        {"type": "integer", "minimum": float("inf")},
        {"enum": ["\ud800"]},
        {"type": "object", "properties": {"\ud800": {}}},
    ],
)
def test_odd_values_are_refused_not_crashed(schema: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedSchema):
        schema_grammar(schema)
