"""KV cache layouts side by side: separate streams, a pool shared by the slots, f16 against q8_0.

For each layout this server starts on the same GGUF and, one layout after the other in one run:

1. one long request: a prompt of ``--long`` token ids, 32 tokens out (prefill and decode speed);
2. while it holds its cells, ``--streams`` short counting requests at once (aggregate decode speed
   beside a long sequence, which a pool makes every stream attend over);
3. peak resident memory of the server process.

    python -m bench.kv_layout [--model PATH (default: bench.synthetic's 1.3B)] [--long 3000] [--streams 4] \
        [--layouts "streams:2x16384:f16,pool:8x16384/32768:f16,pool:8x16384/32768:q8_0"]

A layout is ``streams:<slots>x<context>:<type>`` or ``pool:<slots>x<context>/<cells>:<type>``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from spaceserve.deploy.process import ServerProcess

from .synthetic import synthetic_model

SHORT_TOKENS = 64


def parse_layout(text: str) -> dict[str, str]:
    kind, shape, kv_type = text.split(":")
    slots, _, rest = shape.partition("x")
    context, _, cells = rest.partition("/")
    env = {"PARALLEL_SLOTS": slots, "CONTEXT_SIZE": context, "KV_CACHE_TYPE": kv_type}
    env["KV_CACHE_TOKENS"] = cells if kind == "pool" else "0"
    return env


class PeakRSS(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.2)


async def completion(http: httpx.AsyncClient, prompt: Any, max_tokens: int) -> dict[str, Any]:
    body = {"model": "any", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    response = await http.post("/v1/completions", json=body)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


async def measure(url: str, long_tokens: int, streams: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=3600) as http:
        # Token ids from the middle of the vocabulary: any model accepts them, none stops early.
        long_prompt = [1000 + (i * 7919) % 20000 for i in range(long_tokens)]
        alone = await completion(http, long_prompt, 32)
        long_task = asyncio.create_task(completion(http, [*long_prompt, 5], 2000))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        shorts = await asyncio.gather(
            *(completion(http, f"{n}, {n + 1}, {n + 2},", SHORT_TOKENS) for n in range(streams))
        )
        elapsed = time.monotonic() - started
        long_task.cancel()
        await asyncio.gather(long_task, return_exceptions=True)
    generated = sum(r["usage"]["completion_tokens"] for r in shorts)
    return {
        "prefill_tps": alone["timings"]["prompt_per_second"],
        "decode_tps": alone["timings"]["predicted_per_second"],
        "beside_long_tps": generated / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kv_layout", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="a GGUF (default: the synthetic 1.3B, built once and cached)")
    parser.add_argument("--long", type=int, default=3000)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--chat-template", default="deepseek-coder", help="for a GGUF without one (the synthetic 1.3B)")
    parser.add_argument(
        "--layouts", default="streams:2x16384:f16,pool:8x16384/32768:f16,pool:8x16384/32768:q8_0,streams:8x4096:f16"
    )
    args = parser.parse_args(argv)
    model = args.model or synthetic_model()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for layout in args.layouts.split(","):
            env = parse_layout(layout)
            env.update(MODEL_SOURCE=str(model), CHAT_TEMPLATE=args.chat_template, MODEL_ALIASES="*")
            with ServerProcess(Path(scratch) / f"{layout.replace('/', '_')}.log", env) as server:
                sampler = PeakRSS(server.pid)
                sampler.start()
                result = asyncio.run(measure(server.url, args.long, args.streams))
                sampler.running = False
                health = httpx.get(server.url + "/health").json()
            rows.append((layout, health.get("kv_cache", ""), result, sampler.peak))
    print(
        f"| layout | KV cache | prefill {args.long} tok/s | decode tok/s "
        f"| {args.streams} streams beside it, tok/s | peak RSS |"
    )
    print("|---|---|---|---|---|---|")
    for layout, kv, result, peak in rows:
        print(
            f"| {layout} | {kv} | {result['prefill_tps']:.0f} | {result['decode_tps']:.1f} | "
            f"{result['beside_long_tps']:.1f} | {peak / (1 << 30):.2f} GiB |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
