"""One streamed request as a benchmark sees it: when the first text came, how many tokens, the text."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Run:
    started: float
    first: float
    end: float
    tokens: int  # the server's own count (usage) when it sends one, else one per content chunk
    text: str = ""
    broken: bool = False
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def ttft(self) -> float:
        return self.first - self.started

    @property
    def decode_tok_s(self) -> float:
        """Tokens after the first, per second after the first (what a reader of the stream sees)."""
        return (self.tokens - 1) / max(1e-9, self.end - self.first)


async def stream(http: httpx.AsyncClient, url: str, path: str, body: dict[str, Any]) -> Run:
    """POST ``body`` with ``stream: true`` to ``url + path`` (chat or text completions) and read it to the end."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    started = time.monotonic()
    first: float | None = None
    chunks = 0
    parts: list[str] = []
    usage: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    broken = False
    try:
        async with http.stream("POST", url + path, json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
                timings = chunk.get("timings") or timings
                choice = (chunk.get("choices") or [{}])[0]
                text = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                if text:
                    chunks += 1
                    parts.append(text)
                    if first is None:
                        first = time.monotonic()
    except httpx.HTTPError:
        broken = True  # counted, not fatal: a table shows how many streams a server broke
    end = time.monotonic()
    tokens = int(usage.get("completion_tokens") or chunks)
    return Run(started, first or end, end, tokens, "".join(parts), broken, timings)


def client() -> httpx.AsyncClient:
    # No keep-alive: llama-server closes idle connections, and a reused dead one fails the request.
    return httpx.AsyncClient(timeout=1800, limits=httpx.Limits(max_keepalive_connections=0))
