"""Throughput beside a competing CPU load, as on a shared host: each server quiet, then beside one
busy process, taking turns round after round.

llama.cpp's worker threads wait for each other at every step of a graph; how they wait (spinning
or sleeping) decides what happens when something else wants the CPU. The server names of
bench/servers.py select the variants to compare, e.g. OpenMP's wait policy and spin count:

    python -m bench.contention [--model embedded|synthetic|PATH] [--rounds 2]
        [--servers ours,ours-passive,ours+GOMP_SPINCOUNT=10000,ours-1t,llama-server]

Prints, per server, a cold 2,500-token prompt's prefill rate and 1 and 4 streams' aggregate decode
rate, quiet and busy, and busy / quiet.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import uuid
from pathlib import Path

from bench.client import client
from bench.compare import Prompts, complete, report, streams
from bench.servers import REPO, Layout, Server, resolve_model, run_servers

SCENARIOS = ("prefill_tok_s", "c1_tok_s", "c4_tok_s")


async def measure(server: Server, prompts: Prompts) -> dict[str, float]:
    results: dict[str, float] = {}
    async with client() as http:
        cold = await complete(http, server, prompts.with_system(uuid.uuid4().hex[:8], "\n\nTask: a bakery page."), 1)
    results["prefill_tok_s"] = cold.timings.get("prompt_n", 0) / cold.ttft if cold.timings else 0.0
    for n in (1, 4):
        await streams(server, n, results, f"c{n}")
    return results


async def beside_busy(server: Server, prompts: Prompts) -> dict[str, float]:
    busy = await asyncio.create_subprocess_exec(sys.executable, "-c", "while True: pass")
    try:
        return await measure(server, prompts)
    finally:
        busy.kill()
        await busy.wait()


async def run_rounds(servers: list[Server], prompts: Prompts, rounds: int) -> dict[str, dict[str, float]]:
    quiet: dict[str, list[dict[str, float]]] = {s.name: [] for s in servers}
    busy: dict[str, list[dict[str, float]]] = {s.name: [] for s in servers}
    for round_no in range(rounds):
        for server in servers:
            print(f"-- round {round_no + 1}/{rounds}: {server.name}", file=sys.stderr, flush=True)
            async with client() as http:
                await complete(http, server, "1, 2, 3,", 4)  # paged in
            quiet[server.name].append(await measure(server, prompts))
            busy[server.name].append(await beside_busy(server, prompts))
    results: dict[str, dict[str, float]] = {}
    for server in servers:
        row: dict[str, float] = {}
        for key in SCENARIOS:
            row[f"quiet_{key}"] = statistics.median(r[key] for r in quiet[server.name])
            row[f"busy_{key}"] = statistics.median(r[key] for r in busy[server.name])
            row[f"ratio_{key}"] = row[f"busy_{key}"] / max(1e-9, row[f"quiet_{key}"])
        results[server.name] = row
    return results


LABELS = {"prefill_tok_s": "prefill 2.5k, tok/s", "c1_tok_s": "1 stream, tok/s", "c4_tok_s": "4 streams, tok/s"}
ROWS = [
    row
    for key, label in LABELS.items()
    for row in (
        (f"quiet_{key}", f"{label}, quiet", "{:.1f}"),
        (f"busy_{key}", f"{label}, beside a busy process", "{:.1f}"),
        (f"ratio_{key}", f"{label}, busy / quiet", "{:.2f}"),
    )
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="embedded, synthetic or a GGUF path")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--servers", default="ours,llama-server")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench")
    args = parser.parse_args()
    model = resolve_model(args.model)
    layout = Layout(threads=args.threads, slots=8, context=4096)
    prompts = Prompts(model)
    names = args.servers.split(",")
    results = run_servers(names, model, layout, args.out, lambda running: run_rounds(running, prompts, args.rounds))
    title = (
        f"competing CPU load on {model.name}: one busy process beside the server; {layout.threads} threads, "
        f"8 slots, median of {args.rounds} rounds"
    )
    report(title, results, names, ROWS, args.out / f"contention-{model.stem}.json")


if __name__ == "__main__":
    main()
