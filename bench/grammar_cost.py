"""What a structured-output request costs the streams beside it in the batch.

Starts this server on the embedded model (or ``--model``) and, round after round, measures the
aggregate decode speed of ``--streams`` free counting streams beside one chat request without and
then with a JSON-schema ``response_format`` (same slots, prompts and sampling), and prints the
medians; their ratio is what the grammar costs the others:

    python -m bench.grammar_cost [--model PATH] [--streams 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from spaceserve.deploy.process import ServerProcess

TOKENS = 96
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        # Long enough that the structured neighbour outlasts the free streams, as the plain one does.
        "tags": {
            "type": "array",
            "items": {"type": "string", "minLength": 8, "maxLength": 20},
            "minItems": 24,
            "maxItems": 24,
        },
        "rating": {"type": "integer"},
    },
    "required": ["name", "tags", "rating"],
}


async def free_stream(http: httpx.AsyncClient, start: int) -> int:
    prompt = ", ".join(str(n) for n in range(start, start + 6)) + ","
    body = {"model": "any", "prompt": prompt, "max_tokens": TOKENS, "temperature": 0}
    response = await http.post("/v1/completions", json=body)
    response.raise_for_status()
    return int(response.json()["usage"]["completion_tokens"])


async def neighbour(http: httpx.AsyncClient, grammar: bool) -> int:
    body: dict[str, Any] = {
        "model": "any",
        "messages": [{"role": "user", "content": "Describe a fictional bakery as JSON, with many tags."}],
        "max_tokens": 2 * TOKENS,
        "temperature": 0.7,
        "seed": 1,
    }
    if grammar:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "bakery", "schema": SCHEMA}}
    response = await http.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    return int(response.json()["usage"]["completion_tokens"])


async def aggregate(url: str, streams: int, grammar: bool) -> tuple[float, int]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        other = asyncio.create_task(neighbour(http, grammar))
        started = time.monotonic()
        tokens = await asyncio.gather(*(free_stream(http, 10 * n + 1) for n in range(streams)))
        elapsed = time.monotonic() - started
        neighbour_tokens = await other
    return sum(tokens) / elapsed, neighbour_tokens


def shortest(*runs: list[tuple[float, int]]) -> str:
    return " / ".join(str(min(n for _, n in run)) for run in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grammar_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="a GGUF (default: the embedded model)")
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    env = {"PARALLEL_SLOTS": str(args.streams + 1), "CONTEXT_SIZE": "1024", "MODEL_ALIASES": "*"}
    if args.model:
        env["MODEL_SOURCE"] = str(args.model)
    plain: list[tuple[float, int]] = []
    constrained: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory() as scratch, ServerProcess(Path(scratch) / "server.log", env) as server:
        asyncio.run(aggregate(server.url, args.streams, True))  # warm both paths
        for _ in range(args.rounds):
            plain.append(asyncio.run(aggregate(server.url, args.streams, False)))
            constrained.append(asyncio.run(aggregate(server.url, args.streams, True)))
    a = statistics.median(rate for rate, _ in plain)
    b = statistics.median(rate for rate, _ in constrained)
    rows: list[tuple[str, Any]] = [
        (f"{args.streams} free streams beside one plain chat request, tok/s", f"{a:.1f}"),
        (f"{args.streams} free streams beside one json_schema request, tok/s", f"{b:.1f}"),
        ("json_schema / plain", f"{b / a:.2f}"),
        # Fair only when both neighbours outlast the free streams' TOKENS.
        (
            "neighbour tokens, plain / json_schema (min)",
            f"{min(n for _, n in plain)} / {min(n for _, n in constrained)}",
        ),
    ]
    print(f"| metric (median of {args.rounds} rounds) | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
