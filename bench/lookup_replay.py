"""Replay a reply through the draft lookup, without a model: what speculation would draft and keep.

The reply is the one a perfect model gives to bench.site's edit ("the whole page back with only the
title changed"): the page, title changed, in a code fence. Each step drafts as the scheduler does
(``NgramLookup.draft`` with its draft lengths: ``FIRST_DRAFT``, then ``next_draft_length``, at
most ``--draft-max``), keeps the draft tokens that equal the reply's next
tokens and one more (the model's own). Rows per token is what a step costs on a CPU, where a draft
row costs nearly a token's compute (bench.draft_cost): 1.0 without speculation.

    python -m bench.lookup_replay [--model embedded|synthetic|PATH] [--draft-max 48]
"""

from __future__ import annotations

import argparse

from bench.prompts import vocab
from bench.servers import resolve_model
from bench.site import EDIT_ASK, Workload
from spaceserve.engine.lookup import NgramLookup
from spaceserve.engine.scheduler import FIRST_DRAFT, next_draft_length


def replay(prompt: list[int], reply: list[int], draft_max: int) -> dict[str, int]:
    lookup = NgramLookup(prompt)
    done = steps = drafted = accepted = 0
    length = FIRST_DRAFT
    while done < len(reply):
        draft = lookup.draft(min(draft_max, length, len(reply) - done - 1))
        kept = 0
        while kept < len(draft) and draft[kept] == reply[done + kept]:
            kept += 1
        for token in reply[done : done + kept + 1]:
            lookup.add(token)
        done += kept + 1
        steps += 1
        drafted += len(draft)
        accepted += kept
        if draft:
            length = next_draft_length(kept)
    return {"tokens": len(reply), "steps": steps, "drafted": drafted, "accepted": accepted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="embedded, synthetic or a GGUF path (its vocabulary)")
    parser.add_argument("--draft-max", type=int, default=48)
    args = parser.parse_args()
    model = resolve_model(args.model)
    work = Workload(model, 0, 0)
    tokenizer = vocab(model)
    # The prompt's text as the chat carries it; the template's few markers do not change the lookup.
    prompt = tokenizer.tokenize(f"{work.edit_system}\n\n{EDIT_ASK}\n".encode(), add_bos=True, special=False)
    answer = "```html\n" + work.page.replace("Harbour Bakery", "Quay Bakery") + "```\n"
    result = replay(prompt, tokenizer.tokenize(answer.encode(), add_bos=False, special=False), args.draft_max)
    rows = (result["steps"] + result["drafted"]) / result["tokens"]
    print("| reply tokens | steps | drafted | accepted | acceptance | rows per token |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {result['tokens']} | {result['steps']} | {result['drafted']} | {result['accepted']} | "
        f"{result['accepted'] / max(result['drafted'], 1):.0%} | {rows:.2f} |"
    )


if __name__ == "__main__":
    main()
