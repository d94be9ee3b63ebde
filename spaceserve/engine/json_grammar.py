"""JSON schema -> GBNF, for llama.cpp's grammar sampler (``response_format``).

The grammar generates only instances of the schema; it may generate fewer than the schema allows
(object properties come in the order declared, no properties beyond the declared ones, bounded
whitespace and number lengths). A construct it cannot honour raises :class:`UnsupportedSchema`
naming it, so a request never silently falls back to free-form text.

``oneOf`` is treated as ``anyOf``: the reply validates when the branches are disjoint, as the
discriminated unions pydantic emits are.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# Bounded whitespace and digits: a small model must not be able to loop on spaces or digits.
PRIMITIVES = {
    "ws": r"[ \t\n]{0,20}",
    "char": r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    "string": r'"\"" char* "\""',
    "integer": r'"-"? ("0" | [1-9] [0-9]{0,15})',
    "number": r'integer ("." [0-9]{1,15})? ([eE] [-+]? [0-9]{1,3})?',
    "boolean": r'"true" | "false"',
    "null": r'"null"',
    "value": r"object | array | string | number | boolean | null",
    "object": r'"{" ws ( member ( ws "," ws member )* ws )? "}"',
    "member": r'string ws ":" ws value',
    "array": r'"[" ws ( value ( ws "," ws value )* ws )? "]"',
}
PRIMITIVE_DEPS = {
    "string": ["char"],
    "integer": [],
    "number": ["integer"],
    "value": ["object", "array", "string", "number", "boolean", "null"],
    "object": ["ws", "member"],
    "member": ["string", "ws", "value"],
    "array": ["ws", "value"],
}

# Keywords that only describe; they never constrain an instance.
ANNOTATIONS = {
    "title",
    "description",
    "default",
    "examples",
    "example",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
    "discriminator",  # OpenAPI's hint beside oneOf; the branches' const values do the work
    "$defs",
    "definitions",
    "strict",
}
FORMATS = {
    "date": r'[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [12] [0-9] | "3" [01] )',
    "time": r'( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{1,6} )? '
    r'( "Z" | [+-] [0-9]{2} ":" [0-9]{2} )',
    "uuid": r'[0-9a-f]{8} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{12}',
}
FORMATS["date-time"] = f'{FORMATS["date"]} "T" {FORMATS["time"]}'
MAX_REPEAT = 4096  # largest minLength/maxLength/minItems/maxItems turned into a bounded repetition
MAX_ENUMERATED_INTEGERS = 256
MAX_DEPTH = 64  # nested schemas; deeper ones are refused rather than overflowing Python's stack


class UnsupportedSchema(ValueError):
    """The schema uses something the grammar cannot honour; the message names it."""


def literal(text: str) -> str:
    """A GBNF string literal matching ``text`` exactly."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def json_literal(value: Any) -> str:
    return literal(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def repeat(item: str, low: int, high: int | None) -> str:
    if high is None:
        return f"({item}){{{low},}}" if low else f"({item})*"
    if high == low == 1:
        return item
    return f"({item}){{{low},{high}}}"


class GrammarBuilder:
    def __init__(self, root_schema: dict[str, Any]) -> None:
        self.root_schema = root_schema
        self.rules: dict[str, str] = {}
        self._by_body: dict[str, str] = {}
        self._refs: dict[str, str] = {}
        self._depth = 0

    # -- rules -------------------------------------------------------------------------------

    def primitive(self, name: str) -> str:
        if name not in self.rules:
            self.rules[name] = PRIMITIVES[name]
            for dep in PRIMITIVE_DEPS.get(name, []):
                self.primitive(dep)
        return name

    def rule(self, hint: str, body: str) -> str:
        """A named rule for ``body`` (identical bodies share one rule)."""
        if body in self._by_body:
            return self._by_body[body]
        base = re.sub(r"[^a-zA-Z0-9]+", "-", hint).strip("-").lower() or "r"
        name, n = base, 1
        while name in self.rules or name in PRIMITIVES or name == "root":
            n += 1
            name = f"{base}-{n}"
        self.rules[name] = body
        self._by_body[body] = name
        return name

    def grammar(self) -> str:
        return "".join(f"{name} ::= {body}\n" for name, body in self.rules.items())

    # -- schemas -----------------------------------------------------------------------------

    def visit(self, schema: Any, path: str) -> str:
        """An expression (a rule name or a literal) matching the instances of ``schema``."""
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise UnsupportedSchema(f"'{path}' is nested more than {MAX_DEPTH} levels deep")
            return self._visit(schema, path)
        finally:
            self._depth -= 1

    def _visit(self, schema: Any, path: str) -> str:
        if schema is True or schema == {}:
            return self.primitive("value")
        if schema is False:
            raise UnsupportedSchema(f"'{path}' is false: no value can match it")
        if not isinstance(schema, dict):
            raise UnsupportedSchema(f"'{path}' is not a schema object")
        self._check_keywords(schema, path)
        if "$ref" in schema:
            return self._ref(schema["$ref"], path)
        if "const" in schema:
            return json_literal(schema["const"])
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise UnsupportedSchema(f"'{path}.enum' must be a non-empty list")
            return self.rule(path, " | ".join(json_literal(v) for v in values))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                branches = schema[key]
                if not isinstance(branches, list) or not branches:
                    raise UnsupportedSchema(f"'{path}.{key}' must be a non-empty list")
                alts = [self.visit(b, f"{path}.{key}[{i}]") for i, b in enumerate(branches)]
                return self.rule(path, " | ".join(alts))
        if "allOf" in schema:
            parts = schema["allOf"]
            if not isinstance(parts, list) or len(parts) != 1:
                raise UnsupportedSchema(f"'{path}.allOf' with more than one schema is not supported")
            return self.visit(parts[0], f"{path}.allOf[0]")
        kind = schema.get("type")
        if kind is None:
            if "properties" in schema or "additionalProperties" in schema or "required" in schema:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            else:
                return self.primitive("value")
        if isinstance(kind, list):
            if not kind:
                raise UnsupportedSchema(f"'{path}.type' must not be empty")
            alts = [self._typed(schema, t, path) for t in kind]
            return self.rule(path, " | ".join(alts))
        return self._typed(schema, kind, path)

    def _check_keywords(self, schema: dict[str, Any], path: str) -> None:
        handled = {
            "type",
            "$ref",
            "const",
            "enum",
            "anyOf",
            "oneOf",
            "allOf",
            "properties",
            "required",
            "additionalProperties",
            "items",
            "prefixItems",
            "minItems",
            "maxItems",
            "minLength",
            "maxLength",
            "pattern",
            "format",
            "minimum",
            "maximum",
            "exclusiveMinimum",
            "exclusiveMaximum",
        }
        for key in schema:
            if key in handled or key in ANNOTATIONS or key.startswith("x-"):
                continue
            if key == "uniqueItems" and not schema[key]:
                continue
            raise UnsupportedSchema(f"the schema keyword '{key}' (at '{path}') is not supported")

    def _ref(self, ref: Any, path: str) -> str:
        if not isinstance(ref, str):
            raise UnsupportedSchema(f"'{path}.$ref' must be a string")
        if ref in self._refs:
            return self._refs[ref]
        match = re.fullmatch(r"#/(\$defs|definitions)/([^/]+)", ref)
        if ref == "#":
            target: Any = self.root_schema
            hint = "root-ref"
        elif match:
            defs = self.root_schema.get(match.group(1))
            target = defs.get(match.group(2)) if isinstance(defs, dict) else None
            if target is None:
                raise UnsupportedSchema(f"'{path}.$ref' points at '{ref}', which the schema does not define")
            hint = match.group(2)
        else:
            raise UnsupportedSchema(
                f"'{path}.$ref' is '{ref}'; only references into '#/$defs' or '#/definitions' are supported"
            )
        # Reserve the name first, so recursive references resolve to the rule being built.
        name = self.rule("ref-" + hint, f"__pending__ {ref}")
        self._refs[ref] = name
        body = self.visit(target, ref)
        del self._by_body[f"__pending__ {ref}"]
        self.rules[name] = body
        return name

    def _typed(self, schema: dict[str, Any], kind: Any, path: str) -> str:
        if kind == "object":
            return self._object(schema, path)
        if kind == "array":
            return self._array(schema, path)
        if kind == "string":
            return self._string(schema, path)
        if kind in ("integer", "number"):
            return self._number(schema, kind, path)
        if kind in ("boolean", "null"):
            return self.primitive(kind)
        raise UnsupportedSchema(f"'{path}.type' is '{kind}', which is not a JSON schema type")

    def _object(self, schema: dict[str, Any], path: str) -> str:
        props = schema.get("properties") or {}
        if not isinstance(props, dict):
            raise UnsupportedSchema(f"'{path}.properties' must be an object")
        required = schema.get("required") or []
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise UnsupportedSchema(f"'{path}.required' must be a list of property names")
        missing = [r for r in required if r not in props]
        if missing:
            raise UnsupportedSchema(f"'{path}.required' names '{missing[0]}', which is not among its properties")
        extra = schema.get("additionalProperties", None if props else True)
        if not props:
            if extra is False:
                return literal("{}")
            if extra is True or extra is None or extra == {}:
                return self.primitive("object")
            value = self.visit(extra, f"{path}.additionalProperties")
            ws, key = self.primitive("ws"), self.primitive("string")
            member = self.rule(f"{path}-entry", f'{key} {ws} ":" {ws} {value}')
            return self.rule(path, f'"{{" {ws} ( {member} ( {ws} "," {ws} {member} )* {ws} )? "}}"')
        # Declared properties only: an object without extras is valid whatever additionalProperties says.
        ws = self.primitive("ws")
        members = []
        for name, sub in props.items():
            value = self.visit(sub, f"{path}.{name}")
            members.append((f'{literal(json.dumps(name, ensure_ascii=False))} {ws} ":" {ws} {value}', name in required))

        # after(i): members i.. once one has been written (each preceded by a comma).
        def after(i: int) -> str:
            parts = [f'{ws} "," {ws} {kv}' if req else f'( {ws} "," {ws} {kv} )?' for kv, req in members[i:]]
            return " ".join(parts)

        alternatives = []
        for j, (kv, req) in enumerate(members):
            alternatives.append(f"{kv} {after(j + 1)}".strip())
            if req:
                break
        else:
            alternatives.append("")  # every property optional: the empty object
        body = " | ".join(f"( {alt} )" if alt else '""' for alt in alternatives)
        inner = self.rule(f"{path}-members", body)
        return self.rule(path, f'"{{" {ws} {inner} {ws} "}}"')

    def _array(self, schema: dict[str, Any], path: str) -> str:
        low = self._count(schema, "minItems", path) or 0
        high = self._count(schema, "maxItems", path)
        if high is not None and high < low:
            raise UnsupportedSchema(f"'{path}' has maxItems below minItems")
        ws = self.primitive("ws")
        prefix = schema.get("prefixItems")
        items = schema.get("items", True)
        if prefix is not None:
            if items is not False or not isinstance(prefix, list) or not prefix:
                raise UnsupportedSchema(f"'{path}.prefixItems' is supported only as a fixed tuple (items: false)")
            if not low <= len(prefix) <= (high if high is not None else len(prefix)):
                raise UnsupportedSchema(f"'{path}' has a tuple length outside minItems/maxItems")
            parts = [self.visit(s, f"{path}.prefixItems[{i}]") for i, s in enumerate(prefix)]
            return self.rule(path, f'"[" {ws} ' + f' {ws} "," {ws} '.join(parts) + f' {ws} "]"')
        if isinstance(items, list):
            raise UnsupportedSchema(f"'{path}.items' as a list is not supported; use prefixItems")
        if items is False or high == 0:
            return literal("[]")
        item = self.visit(items, f"{path}.items")
        more = repeat(f'{ws} "," {ws} {item}', max(low - 1, 0), None if high is None else high - 1)
        body = f"{item} {more}"
        body = f"( {body} {ws} )?" if low == 0 else f"{body} {ws}"
        return self.rule(path, f'"[" {ws} {body} "]"')

    def _string(self, schema: dict[str, Any], path: str) -> str:
        fmt, pattern = schema.get("format"), schema.get("pattern")
        low = self._count(schema, "minLength", path)
        high = self._count(schema, "maxLength", path)
        if sum(x is not None for x in (fmt, pattern)) + (low is not None or high is not None) > 1:
            raise UnsupportedSchema(f"'{path}' combines format, pattern and length limits; use one of them")
        if fmt is not None:
            if not isinstance(fmt, str) or fmt not in FORMATS:
                raise UnsupportedSchema(f"'{path}.format' is '{fmt}'; supported: {', '.join(sorted(FORMATS))}")
            return self.rule(f"{path}-{fmt}", f'"\\"" {FORMATS[fmt]} "\\""')
        if pattern is not None:
            if not isinstance(pattern, str):
                raise UnsupportedSchema(f"'{path}.pattern' must be a string")
            body = RegexTranslator(pattern, path).translate()
            return self.rule(path, f'"\\"" ( {body} ) "\\""')
        if low is not None or high is not None:
            if high is not None and low is not None and high < low:
                raise UnsupportedSchema(f"'{path}' has maxLength below minLength")
            char = self.primitive("char")
            self.primitive("string")
            return self.rule(path, f'"\\"" {repeat(char, low or 0, high)} "\\""')
        return self.primitive("string")

    def _number(self, schema: dict[str, Any], kind: str, path: str) -> str:
        bounds: dict[str, Any] = {
            k: schema[k] for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") if k in schema
        }
        if not bounds:
            return self.primitive(kind)
        for key, value in bounds.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UnsupportedSchema(f"'{path}.{key}' must be a number")
        if kind == "integer":
            low = _int_bound(bounds, "minimum", "exclusiveMinimum", up=True)
            high = _int_bound(bounds, "maximum", "exclusiveMaximum", up=False)
            if low is not None and high is not None:
                if high < low:
                    raise UnsupportedSchema(f"'{path}' has no integer between its minimum and maximum")
                if high - low < MAX_ENUMERATED_INTEGERS:
                    return self.rule(path, " | ".join(f'"{n}"' for n in range(low, high + 1)))
            if high is None and low is not None and low in (0, 1):
                return self.rule(path, '"0" | [1-9] [0-9]{0,15}' if low == 0 else "[1-9] [0-9]{0,15}")
        elif set(bounds) == {"minimum"} and bounds["minimum"] == 0:
            self.primitive("number")
            return self.rule(path, '("0" | [1-9] [0-9]{0,15}) ("." [0-9]{1,15})? ([eE] [-+]? [0-9]{1,3})?')
        raise UnsupportedSchema(
            f"'{path}' has numeric bounds this server cannot enforce ({', '.join(bounds)}); supported: integer "
            f"ranges under {MAX_ENUMERATED_INTEGERS} values, integer minimum 0 or 1, number minimum 0"
        )

    def _count(self, schema: dict[str, Any], key: str, path: str) -> int | None:
        value = schema.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UnsupportedSchema(f"'{path}.{key}' must be a non-negative integer")
        if value > MAX_REPEAT:
            raise UnsupportedSchema(f"'{path}.{key}' is over {MAX_REPEAT}, the largest supported")
        return int(value)


def _int_bound(bounds: dict[str, Any], inclusive: str, exclusive: str, *, up: bool) -> int | None:
    candidates: list[int] = []
    if inclusive in bounds:
        v = bounds[inclusive]
        candidates.append(math.ceil(v) if up else math.floor(v))
    if exclusive in bounds:
        v = bounds[exclusive]
        candidates.append(math.floor(v) + 1 if up else math.ceil(v) - 1)
    if not candidates:
        return None
    return max(candidates) if up else min(candidates)


class RegexTranslator:
    """A subset of regular expressions -> GBNF, matching the JSON-escaped text of the string.

    Literals, ``.``, classes, escapes (\\d \\w \\s), groups, alternation and the quantifiers
    ``* + ? {m} {m,} {m,n}``; ``^``/``$`` only at the ends. Characters that JSON must escape
    (quote, backslash, controls) are left out of classes and ``.``.
    """

    def __init__(self, pattern: str, path: str) -> None:
        self.src = pattern
        self.path = path
        self.i = 0
        self._shorthand: list[tuple[int, int]] = []

    def fail(self, what: str) -> UnsupportedSchema:
        return UnsupportedSchema(f"'{self.path}.pattern' uses {what}, which is not supported")

    def translate(self) -> str:
        src = self.src
        if src.startswith("^"):
            self.i = 1
        if src.endswith("$") and not src.endswith("\\$"):
            src = self.src = src[:-1]
        body = self._alternation()
        if self.i != len(self.src):
            raise self.fail(f"'{self.src[self.i]}' at position {self.i}")
        return body

    def _alternation(self) -> str:
        branches = [self._sequence()]
        while self.i < len(self.src) and self.src[self.i] == "|":
            self.i += 1
            branches.append(self._sequence())
        return " | ".join(b or '""' for b in branches)

    def _sequence(self) -> str:
        items: list[str] = []
        while self.i < len(self.src) and self.src[self.i] not in "|)":
            atom = self._atom()
            items.append(self._quantified(atom))
        return " ".join(items)

    def _quantified(self, atom: str) -> str:
        if self.i >= len(self.src):
            return atom
        ch = self.src[self.i]
        if ch in "*+?":
            self.i += 1
            if self.i < len(self.src) and self.src[self.i] in "?+":
                self.i += 1  # lazy/possessive: the same strings
            return f"({atom}){ch}"
        if ch == "{":
            m = re.match(r"\{(\d+)(,(\d*))?\}", self.src[self.i :])
            if not m:
                raise self.fail("a malformed '{' quantifier")
            self.i += m.end()
            low = int(m.group(1))
            high = low if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
            if low > MAX_REPEAT or (high is not None and (high > MAX_REPEAT or high < low)):
                raise self.fail("a repetition count out of range")
            return f"({atom}){{{low}}}" if high == low else f"({atom}){{{low},{'' if high is None else high}}}"
        return atom

    def _atom(self) -> str:
        src = self.src
        ch = src[self.i]
        if ch == "(":
            self.i += 1
            if src.startswith("?:", self.i):
                self.i += 2
            elif src.startswith("?", self.i):
                raise self.fail("lookaround or named groups")
            body = self._alternation()
            if self.i >= len(src) or src[self.i] != ")":
                raise self.fail("an unclosed group")
            self.i += 1
            return f"({body})"
        if ch == "[":
            return self._class()
        if ch == ".":
            self.i += 1
            return r'[^"\\\x7F\x00-\x1F]'
        if ch == "\\":
            return self._escape()
        if ch in "^$":
            raise self.fail(f"'{ch}' inside the pattern")
        if ch in "*+?{":
            raise self.fail(f"a quantifier '{ch}' with nothing before it")
        self.i += 1
        return literal(json.dumps(ch, ensure_ascii=False)[1:-1])

    def _escape(self) -> str:
        self.i += 1
        if self.i >= len(self.src):
            raise self.fail("a trailing backslash")
        ch = self.src[self.i]
        self.i += 1
        # \\s: a space, or the JSON escapes of tab, newline and carriage return.
        classes = {"d": "[0-9]", "w": "[a-zA-Z0-9_]", "s": '" " | "\\\\t" | "\\\\n" | "\\\\r"'}
        if ch in classes:
            return f"({classes[ch]})"
        if ch.isalnum():
            raise self.fail(f"the escape '\\{ch}'")
        return literal(json.dumps(ch, ensure_ascii=False)[1:-1])

    def _class(self) -> str:
        src = self.src
        self.i += 1
        negated = src.startswith("^", self.i)
        if negated:
            self.i += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while self.i < len(src) and (src[self.i] != "]" or first):
            first = False
            low = self._class_char()
            if low is None:
                ranges.extend(self._shorthand)
                continue
            if src.startswith("-", self.i) and self.i + 1 < len(src) and src[self.i + 1] != "]":
                self.i += 1
                high = self._class_char()
                if high is None or high < low:
                    raise self.fail("a bad range in a class")
                ranges.append((low, high))
            else:
                ranges.append((low, low))
        if self.i >= len(src):
            raise self.fail("an unclosed class")
        self.i += 1
        if negated:
            return "[^" + "".join(_range(lo, hi) for lo, hi in ranges) + '"\\\\\\x7F\\x00-\\x1F]'
        # Characters JSON must escape (quote, backslash, controls) are dropped from the class: a subset.
        kept = [r for lo, hi in ranges for r in _subtract(lo, hi)]
        if not kept:
            raise self.fail("a class of only characters JSON must escape")
        return "[" + "".join(_range(lo, hi) for lo, hi in kept) + "]"

    def _class_char(self) -> int | None:
        """One class member's code point; None for a shorthand (added as ranges directly)."""
        src = self.src
        ch = src[self.i]
        self.i += 1
        if ch == "[":
            raise self.fail("nested classes")
        if ch != "\\":
            return ord(ch)
        if self.i >= len(src):
            raise self.fail("a trailing backslash")
        esc = src[self.i]
        self.i += 1
        if esc in "dws":
            # \\s keeps only the space here: a class cannot hold a two-character JSON escape.
            shorthands = {"d": [(0x30, 0x39)], "w": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]}
            self._shorthand = shorthands.get(esc, [(0x20, 0x20)])
            return None
        if esc.isalnum():
            raise self.fail(f"the escape '\\{esc}' in a class")
        return ord(esc)


FORBIDDEN = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0x7F, 0x7F)]


def _subtract(low: int, high: int) -> list[tuple[int, int]]:
    pieces = [(low, high)]
    for f_low, f_high in FORBIDDEN:
        nxt = []
        for lo, hi in pieces:
            if hi < f_low or lo > f_high:
                nxt.append((lo, hi))
                continue
            if lo < f_low:
                nxt.append((lo, f_low - 1))
            if hi > f_high:
                nxt.append((f_high + 1, hi))
        pieces = nxt
    return pieces


def _class_point(code: int) -> str:
    ch = chr(code)
    if ch in ']\\^-"' or code < 0x20 or code == 0x7F:
        return f"\\x{code:02X}"
    return ch


def _range(low: int, high: int) -> str:
    return _class_point(low) if low == high else f"{_class_point(low)}-{_class_point(high)}"


def schema_grammar(schema: Any) -> str:
    """GBNF whose ``root`` matches JSON instances of ``schema`` (raises UnsupportedSchema)."""
    if not isinstance(schema, dict):
        raise UnsupportedSchema("the schema must be a JSON object")
    builder = GrammarBuilder(schema)
    try:
        root = builder.visit(schema, "schema")
    except (TypeError, OverflowError, RecursionError) as exc:  # odd values the checks above missed
        raise UnsupportedSchema(f"the schema could not be translated ({type(exc).__name__}: {exc})") from exc
    builder.rules = {"root": root, **builder.rules}
    grammar = builder.grammar()
    try:
        grammar.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UnsupportedSchema("the schema holds text that is not valid Unicode (a lone surrogate)") from exc
    return grammar


def json_object_grammar() -> str:
    """GBNF for any JSON object (``response_format: {"type": "json_object"}``)."""
    builder = GrammarBuilder({})
    builder.primitive("object")
    builder.rules = {"root": "object", **builder.rules}
    return builder.grammar()
