"""Compare this server with llama.cpp's llama-server (and llama-cpp-python's bundled server).

Every server gets the same GGUF, threads, slots, KV cache and prompts, and runs the same scenarios:

1. single stream: generated tokens per second over 128 tokens;
2. time to first token of a 3,000-token prompt never seen (cold), and of a follow-up that shares
   a 2,500-token system prompt with the request before it, against the same follow-up cold;
3. 1, 4 and 8 concurrent streams: aggregate generated tokens per second, p50/p95 time to first token;
4. resident memory: peak, and after the 1-stream and the 8-stream runs;
5. ``--long N``: 8 streams at once, one of them with an N-token prompt; peak memory.

bench/contention.py runs 1 and 4 streams beside a busy process (a shared host).

Prompts go to /v1/completions as plain text so that no server's chat template changes the token
count; prompts are sized in the model's own tokens. Counting prompts keep every server generating
to the full token budget.

    python -m bench.compare [--model embedded|synthetic|PATH] [--threads 2] [--slots 8] [--rounds 3]
                            [--servers ours,llama-server] [--long 15000]

``--model synthetic`` is the random-weight 1.3B of the primary model's shape (bench/synthetic.py)
with the primary template's layout (16,384 tokens per request, a 32,768-token shared KV pool) and
``--long 15000``. Servers take turns, round after round; each figure is the median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.client import client, stream
from bench.prompts import rules, sized
from bench.servers import REPO, Layout, Server, cpu_name, resolve_model, run_servers

TOKENS = 128
CONCURRENCY = (1, 4, 8)
SYSTEM_TOKENS = 2500
LONG_TAIL_TOKENS = 500


def counting_prompt(start: int) -> str:
    return ", ".join(str(n) for n in range(start, start + 6)) + ","


class Prompts:
    """The scenario prompts, sized once in the model's tokens."""

    def __init__(self, model: Path) -> None:
        self.system = sized(model, lambda n: rules(100 * n), SYSTEM_TOKENS)
        self.long_tail = "\n\nThe current page:\n" + sized(model, lambda n: rules(100 * n)[::-1], LONG_TAIL_TOKENS)
        self.model = model

    def with_system(self, tag: str, tail: str) -> str:
        # The tag comes first, so that a cold prompt shares nothing with any earlier one.
        return f"[{tag}] {self.system}{tail}"

    def long(self, tokens: int) -> str:
        return f"[{uuid.uuid4().hex[:8]}] " + sized(self.model, lambda n: rules(100 * n), tokens)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def complete(http: Any, server: Server, prompt: str, max_tokens: int):  # type: ignore[no-untyped-def]
    body = {"model": server.model_id, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    return await stream(http, server.url, "/v1/completions", body)


async def streams(server: Server, n: int, results: dict[str, float], key: str, offset: int = 0) -> None:
    """``n`` counting streams at once: aggregate tokens per second and TTFT percentiles."""
    async with client() as http:
        starts = [1000 * (i + 1) + n + offset for i in range(n)]
        began = time.monotonic()
        runs = await asyncio.gather(*(complete(http, server, counting_prompt(s), TOKENS) for s in starts))
    wall = max(r.end for r in runs) - began
    ttfts = [r.ttft for r in runs]
    results[f"{key}_tok_s"] = sum(r.tokens for r in runs) / wall
    results["broken_streams"] = results.get("broken_streams", 0) + sum(r.broken for r in runs)
    results[f"{key}_ttft_p50"] = statistics.median(ttfts)
    results[f"{key}_ttft_p95"] = percentile(ttfts, 0.95)


async def measure(server: Server, prompts: Prompts) -> dict[str, float]:
    results: dict[str, float] = {}
    async with client() as http:
        # Make sure the model is paged in for everyone (ours warms up itself; the others do not).
        await complete(http, server, counting_prompt(900), 8)

        single = await complete(http, server, counting_prompt(1), TOKENS)
        results["single_tok_s"] = single.decode_tok_s

        tag = uuid.uuid4().hex[:8]
        long = await complete(http, server, prompts.with_system(f"a{tag}", prompts.long_tail), 4)
        cold = await complete(http, server, prompts.with_system(f"b{tag}", "\n\nTask: a bakery page."), 4)
        warm = await complete(http, server, prompts.with_system(f"b{tag}", "\n\nTask: now a pricing table."), 4)
        results["prompt_3k_ttft"] = long.ttft
        results["followup_cold_ttft"] = cold.ttft
        results["followup_warm_ttft"] = warm.ttft
        results["followup_warm_over_cold"] = warm.ttft / cold.ttft
    for n in CONCURRENCY:
        await streams(server, n, results, f"c{n}")
        results[f"rss_after_c{n}_mib"] = server.rss() / 2**20
    return results


async def sample_memory(server: Server, stop: asyncio.Event) -> None:
    while not stop.is_set():
        server.rss()
        await asyncio.sleep(0.2)


async def sampled(server: Server, work: Any) -> Any:
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_memory(server, stop))
    try:
        return await work
    finally:
        stop.set()
        await sampler


async def long_with_short(server: Server, prompts: Prompts, tokens: int) -> dict[str, float]:
    """8 streams at once, one with a ``tokens``-token prompt: the peak memory while they run."""
    server.samples.clear()
    prompt = prompts.long(tokens)
    async with client() as http:
        began = time.monotonic()
        runs = await sampled(
            server,
            asyncio.gather(
                complete(http, server, prompt, TOKENS),
                *(complete(http, server, counting_prompt(5000 + 10 * i), TOKENS) for i in range(7)),
            ),
        )
    return {
        "long_peak_rss_mib": max(server.samples) / 2**20,
        "long_ttft": runs[0].ttft,
        "long_wall": max(r.end for r in runs) - began,
        "long_tokens": runs[0].tokens,
        "broken_streams_long": sum(r.broken for r in runs),
    }


async def run_rounds(servers: list[Server], prompts: Prompts, rounds: int, long: int) -> dict[str, Any]:
    """Every server runs every scenario once per round, servers taking turns, so that a noisy
    neighbour on a shared machine hits all of them alike; each figure is the median over rounds."""
    per_round: dict[str, list[dict[str, float]]] = {s.name: [] for s in servers}
    for round_no in range(rounds):
        for server in servers:
            print(f"-- round {round_no + 1}/{rounds}: {server.name}", file=sys.stderr, flush=True)
            per_round[server.name].append(await sampled(server, measure(server, prompts)))
    results: dict[str, dict[str, float]] = {}
    for server in servers:
        rows = per_round[server.name]
        merged = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        merged["peak_rss_mib"] = max(server.samples) / 2**20
        merged["rss_growth_c8_vs_c1"] = merged["rss_after_c8_mib"] / merged["rss_after_c1_mib"] - 1
        results[server.name] = merged
    for server in servers:
        if long:
            print(f"-- 8 streams, one of {long} tokens: {server.name}", file=sys.stderr, flush=True)
            results[server.name].update(await long_with_short(server, prompts, long))
    return results


ROWS = [
    ("single_tok_s", "single stream, tok/s", "{:.1f}"),
    ("prompt_3k_ttft", "3k-token prompt, TTFT s", "{:.2f}"),
    ("followup_cold_ttft", "2.5k system + short request, cold TTFT s", "{:.2f}"),
    ("followup_warm_ttft", "follow-up (same system), TTFT s", "{:.3f}"),
    ("followup_warm_over_cold", "follow-up / cold", "{:.3f}"),
    *[(f"c{n}_tok_s", f"{n} streams, aggregate tok/s", "{:.1f}") for n in CONCURRENCY],
    *[(f"c{n}_ttft_p50", f"{n} streams, TTFT p50 s", "{:.3f}") for n in CONCURRENCY],
    *[(f"c{n}_ttft_p95", f"{n} streams, TTFT p95 s", "{:.3f}") for n in CONCURRENCY],
    ("broken_streams", "streams cut off (per round)", "{:.0f}"),
    ("peak_rss_mib", "peak RSS MiB", "{:.0f}"),
    ("rss_after_c1_mib", "RSS after 1 stream MiB", "{:.0f}"),
    ("rss_after_c8_mib", "RSS after 8 streams MiB", "{:.0f}"),
    ("rss_growth_c8_vs_c1", "RSS growth 8 vs 1", "{:+.1%}"),
    ("long_peak_rss_mib", "8 streams, one long: peak RSS MiB", "{:.0f}"),
    ("long_ttft", "  the long prompt's TTFT s", "{:.1f}"),
    ("long_wall", "  all 8 done after s", "{:.1f}"),
    ("broken_streams_long", "  streams cut off", "{:.0f}"),
]


def table(results: dict[str, dict[str, float]], reference: str, rows: list[tuple[str, str, str]] = ROWS) -> str:
    names = list(results)
    ratio_cols = [n for n in names if n != reference and reference in results]
    header = ["metric", *names, *[f"{reference}/{n}" for n in ratio_cols]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, label, fmt in rows:
        if all(key not in results[name] for name in names):
            continue
        cells = [label]
        for name in names:
            value = results[name].get(key)
            cells.append(fmt.format(value) if value is not None else "n/a")
        for name in ratio_cols:
            mine, theirs = results[reference].get(key), results[name].get(key)
            cells.append(f"{mine / theirs:.2f}" if mine is not None and theirs else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(
    title: str, results: dict[str, dict[str, float]], names: list[str], rows: list[tuple[str, str, str]], out: Path
) -> None:
    """Print the table of ``results`` (ratios to the first of ours, else the first server) under
    ``title`` with the machine and date, and keep the figures as JSON in ``out``."""
    reference = next((n for n in names if n.startswith("ours")), names[0])
    print(f"\n{title}; {cpu_name()}; {time.strftime('%Y-%m-%d')}\n")
    print(table(results, reference, rows))
    out.write_text(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="embedded, synthetic or a GGUF path")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8, help="parallel slots for this server and llama-server")
    parser.add_argument("--context", type=int, help="tokens per request (default 4096; synthetic 16384)")
    parser.add_argument("--kv-pool", type=int, help="shared KV cache tokens (default slots x context; synthetic 32768)")
    parser.add_argument("--servers", default="ours,llama-server", help="comma list; see bench/servers.py")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all scenarios; figures are medians")
    parser.add_argument("--long", type=int, help="run 8 streams with one prompt this long (synthetic: 15000)")
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench")
    args = parser.parse_args()
    synthetic = args.model == "synthetic"
    model = resolve_model(args.model)
    layout = Layout(
        threads=args.threads,
        slots=args.slots,
        context=args.context or (16384 if synthetic else 4096),
        kv_pool=args.kv_pool if args.kv_pool is not None else (32768 if synthetic else 0),
    )
    long = args.long if args.long is not None else (15000 if synthetic else 0)
    prompts = Prompts(model)
    names = args.servers.split(",")
    results = run_servers(
        names, model, layout, args.out, lambda running: run_rounds(running, prompts, args.rounds, long)
    )
    title = (
        f"model {model.name}, {layout.threads} threads, {layout.slots} slots, {layout.context} tokens per "
        f"request, KV cache {layout.kv_tokens} tokens{' shared' if layout.kv_pool else ''}, {TOKENS} tokens "
        f"per stream, median of {args.rounds} rounds"
    )
    report(title, results, names, ROWS, args.out / f"compare-{model.stem}.json")


if __name__ == "__main__":
    main()
