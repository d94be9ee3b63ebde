"""The site generator's workload, this server beside llama-server in one run.

Three cases, streamed through /v1/chat/completions at temperature 0, each server in turn:

- *new page*: a 2,500-token system prompt of rules (never seen before) and a short request;
  ``--new-tokens`` out (1,500);
- *follow-up*: the same system prompt with another short request, so a prefix cache should start
  it fast; its time to first token against the new page's;
- *edit*: edit rules, a 3,000-token page and "give me the page back with one change";
  ``--edit-tokens`` out (1,200): an answer that copies most of the page, where speculation from the
  prompt pays.

``ours-nospec`` and ``llama-server-ngram`` (its ``--spec-type`` n-gram lookup, see
bench/servers.py) show what speculation buys each server; the edit's text is compared with
``ours-nospec``'s token by token in a separate cold request (a difference is reported with how
close the reference's top two tokens were there: a near-tie flipped by batch shape). On the
embedded Gemma the text is real, so drafts are accepted as they would be on the 1.3B coder; on the
synthetic 1.3B (random weights) the speeds are the production size's.

    python -m bench.site [--model embedded|synthetic|PATH] [--rounds 3] [--new-tokens 1500]
                         [--edit-tokens 1200] [--servers ours,ours-nospec,llama-server,llama-server-ngram]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import uuid
from pathlib import Path
from typing import Any

from bench.client import Run, client, stream
from bench.compare import report
from bench.prompts import EDIT_RULES, page, rules, sized
from bench.servers import REPO, Layout, Server, resolve_model, run_servers

SYSTEM_TOKENS = 2500
PAGE_TOKENS = 3000
EDIT_ASK = "Give me the whole page back, exactly as it is, with only the <title> changed to Quay Bakery."


class Workload:
    def __init__(self, model: Path, new_tokens: int, edit_tokens: int) -> None:
        self.system = sized(model, lambda n: rules(100 * n), SYSTEM_TOKENS)
        self.page = sized(model, page, PAGE_TOKENS)
        self.edit_system = rules(len(self.system), EDIT_RULES) + "\n\nThe current page, index.html:\n\n" + self.page
        self.new_tokens = new_tokens
        self.edit_tokens = edit_tokens


async def chat(http: Any, server: Server, system: str, user: str, max_tokens: int) -> Run:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    body = {"model": server.model_id, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    return await stream(http, server.url, "/v1/chat/completions", body)


async def measure(server: Server, work: Workload) -> dict[str, float]:
    results: dict[str, float] = {}
    system = f"[{uuid.uuid4().hex[:8]}] {work.system}"  # a system prompt no server has seen
    async with client() as http:
        await chat(http, server, "Warm-up.", "Say hello.", 4)
        new = await chat(http, server, system, "Create a landing page for a bakery called Crumb & Co.", work.new_tokens)
        follow = await chat(http, server, system, "Create a contact page for the same bakery.", 16)
        # The edit's page comes after the rules, as the generator sends it; a fresh tag keeps it cold.
        edit = await chat(http, server, f"[{uuid.uuid4().hex[:8]}] {work.edit_system}", EDIT_ASK, work.edit_tokens)
    results["new_ttft"] = new.ttft
    results["new_tokens"] = new.tokens
    results["new_tok_s"] = new.decode_tok_s
    results["new_total"] = new.end - new.started
    results["follow_ttft"] = follow.ttft
    results["follow_over_new"] = follow.ttft / new.ttft
    results["edit_ttft"] = edit.ttft
    results["edit_tokens"] = edit.tokens
    results["edit_tok_s"] = edit.decode_tok_s
    results["edit_total"] = edit.end - edit.started
    drafted = edit.timings.get("draft_n")
    if drafted:
        results["edit_drafted"] = drafted
        results["edit_acceptance"] = edit.timings.get("draft_n_accepted", 0) / drafted
    results["broken_streams"] = sum(r.broken for r in (new, follow, edit))
    return results


ROWS = [
    ("new_ttft", "new page: TTFT s", "{:.2f}"),
    ("new_tokens", "new page: tokens out", "{:.0f}"),
    ("new_tok_s", "new page: decode tok/s", "{:.1f}"),
    ("new_total", "new page: total s", "{:.1f}"),
    ("follow_ttft", "follow-up: TTFT s", "{:.3f}"),
    ("follow_over_new", "follow-up / new page TTFT", "{:.3f}"),
    ("edit_ttft", "edit: TTFT s", "{:.2f}"),
    ("edit_tokens", "edit: tokens out", "{:.0f}"),
    ("edit_tok_s", "edit: decode tok/s", "{:.1f}"),
    ("edit_total", "edit: total s", "{:.1f}"),
    ("edit_drafted", "edit: draft tokens", "{:.0f}"),
    ("edit_acceptance", "edit: drafts accepted", "{:.0%}"),
    ("edit_same_tokens", "edit: tokens equal to ours-nospec's", "{:.0%}"),
    ("edit_tie_gap", "  top-two gap where they part, nats", "{:.3f}"),
    ("broken_streams", "streams cut off", "{:.0f}"),
]


async def edit_tokens(server: Server, work: Workload, tag: str) -> list[dict[str, Any]]:
    """The edit, cold, not streamed, with each token's two most likely tokens (for the text check)."""
    messages = [{"role": "system", "content": f"[{tag}] {work.edit_system}"}, {"role": "user", "content": EDIT_ASK}]
    body = {"model": server.model_id, "messages": messages, "max_tokens": work.edit_tokens, "temperature": 0}
    async with client() as http:
        response = await http.post(
            server.url + "/v1/chat/completions", json={**body, "logprobs": True, "top_logprobs": 2}
        )
    response.raise_for_status()
    tokens: list[dict[str, Any]] = response.json()["choices"][0]["logprobs"]["content"]
    return tokens


async def same_text(servers: list[Server], work: Workload) -> dict[str, dict[str, float]]:
    """Each server's edit against ``ours-nospec``'s, token by token, outside the timed rounds
    (log-probabilities cost time): how many tokens agree before the first difference, and by how
    much the reference's top two tokens differed there (a near-tie, in nats). For llama-server it
    shows that both servers answered the same prompt, so their speeds compare the same work."""
    if not any(s.name == "ours-nospec" for s in servers):
        return {}
    tag = uuid.uuid4().hex[:8]
    replies = {s.name: await edit_tokens(s, work, tag) for s in servers}
    reference = replies["ours-nospec"]
    checks: dict[str, dict[str, float]] = {}
    for name, tokens in replies.items():
        agree = next(
            (i for i, (a, b) in enumerate(zip(tokens, reference, strict=False)) if a["token"] != b["token"]), None
        )
        if agree is None:
            agree = min(len(tokens), len(reference))
            checks[name] = {"edit_same_tokens": agree / max(len(tokens), len(reference), 1)}
            continue
        top = reference[agree]["top_logprobs"]
        gap = top[0]["logprob"] - top[1]["logprob"] if len(top) > 1 else float("inf")
        checks[name] = {"edit_same_tokens": agree / max(len(tokens), len(reference)), "edit_tie_gap": gap}
    return checks


async def run_rounds(servers: list[Server], work: Workload, rounds: int) -> dict[str, dict[str, float]]:
    per_round: dict[str, list[dict[str, float]]] = {s.name: [] for s in servers}
    for round_no in range(rounds):
        for server in servers:
            print(f"-- round {round_no + 1}/{rounds}: {server.name}", file=sys.stderr, flush=True)
            per_round[server.name].append(await measure(server, work))
    results = {
        name: {key: statistics.median(r.get(key, 0) for r in rows) for key in rows[0]}
        for name, rows in per_round.items()
    }
    for name, check in (await same_text(servers, work)).items():
        results[name].update(check)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="embedded, synthetic or a GGUF path")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--servers", default="ours,ours-nospec,llama-server,llama-server-ngram")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=1500)
    parser.add_argument("--edit-tokens", type=int, default=1200)
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench")
    args = parser.parse_args()
    model = resolve_model(args.model)
    # The primary template's layout: 8 slots, 16,384 tokens per request, one 32,768-token KV pool.
    layout = Layout(threads=args.threads, slots=8, context=16384, kv_pool=32768)
    work = Workload(model, args.new_tokens, args.edit_tokens)
    names = args.servers.split(",")
    results = run_servers(names, model, layout, args.out, lambda running: run_rounds(running, work, args.rounds))
    title = (
        f"site generator on {model.name}, {layout.threads} threads, primary layout (8 slots, 16,384 tokens per "
        f"request, 32,768-token KV pool), temperature 0, median of {args.rounds} rounds"
    )
    report(title, results, names, ROWS, args.out / f"site-{model.stem}.json")


if __name__ == "__main__":
    main()
