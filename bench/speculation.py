"""Speculative decoding from the prompt, on against off, on the same loaded model in one run.

An edit request (a page of HTML in the prompt, asked back with one change) at temperature 0,
generated with drafts and without, alone and as several streams at once, the two modes taking
turns for ``--rounds`` rounds (a noisy neighbour hits both alike; the median is shown). Prints
decode tokens per second, the speed-up, the acceptance rate and whether the text is the same.

    python -m bench.speculation [--model embedded] [--max-tokens 300] [--streams 1,4] [--draft-max 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import threading
from dataclasses import dataclass

from spaceserve.engine.engine import LlamaEngine
from spaceserve.engine.types import Event, Failed, Finished, GenerationRequest, SamplingParams, TextDelta
from spaceserve.settings import ModelSettings

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Harbour Bakery</title>
  <link rel="stylesheet" href="style.css">
</head>
<body>
  <header class="site-header">
    <h1>Harbour Bakery</h1>
    <nav>
      <a href="#bread">Bread</a>
      <a href="#cakes">Cakes</a>
      <a href="#visit">Visit us</a>
    </nav>
  </header>
  <main>
    <section id="bread">
      <h2>Bread</h2>
      <p>Sourdough, rye and spelt loaves baked every morning from six o'clock.</p>
      <ul>
        <li>Country sourdough - 4.50</li>
        <li>Dark rye with seeds - 5.20</li>
        <li>Spelt and honey - 4.80</li>
      </ul>
    </section>
    <section id="cakes">
      <h2>Cakes</h2>
      <p>Lemon drizzle, carrot cake and a chocolate torte on weekends.</p>
    </section>
    <section id="visit">
      <h2>Visit us</h2>
      <p>12 Quay Street. Open Tuesday to Sunday, 7:00 to 15:00.</p>
    </section>
  </main>
  <footer>
    <p>Harbour Bakery, since 1987.</p>
  </footer>
</body>
</html>
"""

EDIT = "Here is my page:\n\n{page}\nRepeat the whole page exactly, changing only the title to 'Quay Bakery'."


@dataclass
class Outcome:
    text: str
    done: Finished


def run(engine: LlamaEngine, prompts: list[list[int]], max_tokens: int) -> list[Outcome]:
    """Submit all prompts at once (they run as parallel streams) and wait for them."""
    texts: list[list[str]] = [[] for _ in prompts]
    ends: list[Finished | None] = [None] * len(prompts)
    left = threading.Semaphore(0)

    def emitter(i: int):  # type: ignore[no-untyped-def]
        def emit(event: Event) -> None:
            if isinstance(event, TextDelta):
                texts[i].append(event.text)
            elif isinstance(event, Finished):
                ends[i] = event
                left.release()
            elif isinstance(event, Failed):
                raise SystemExit(f"request failed: {event.error.message}")

        return emit

    for i, prompt in enumerate(prompts):
        request = GenerationRequest(
            prompt=prompt, max_tokens=max_tokens, sampling=SamplingParams(temperature=0.0), emit=emitter(i)
        )
        engine.scheduler.submit(request)
    for _ in prompts:
        left.acquire()
    return [Outcome("".join(t), e) for t, e in zip(texts, ends, strict=True) if e is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="MODEL_SOURCE")
    parser.add_argument("--max-tokens", type=int, default=300)
    parser.add_argument("--streams", default="1,4", help="comma-separated stream counts")
    parser.add_argument("--draft-max", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = ModelSettings(
        model_source=args.model, parallel_slots=8, context_size=4096, warmup=True, speculative_draft_max=args.draft_max
    )
    engine = LlamaEngine.load(settings, "bench")
    engine.warm_up()
    prompt = engine.chat_prompt([{"role": "user", "content": EDIT.format(page=PAGE)}])
    print(f"model {args.model}, {settings.threads()} threads, prompt {len(prompt)} tokens, draft max {args.draft_max}")
    print("| streams | off tok/s | on tok/s | speed-up | drafted | accepted | acceptance | same text |")
    print("|---|---|---|---|---|---|---|---|")
    try:
        for streams in (int(s) for s in args.streams.split(",")):
            results: dict[str, list[Outcome]] = {}
            rates: dict[str, list[float]] = {"off": [], "on": []}
            for _ in range(args.rounds):
                for mode, draft_max in (("off", 0), ("on", args.draft_max)):
                    engine.scheduler.draft_max = draft_max
                    run(engine, [prompt], 1)  # the prompt is in the prefix cache for both modes
                    out = results[mode] = run(engine, [prompt] * streams, args.max_tokens)
                    generated = sum(o.done.completion_tokens for o in out)
                    rates[mode].append(generated / max(o.done.predicted_ms for o in out) * 1000)
            rate = {mode: statistics.median(values) for mode, values in rates.items()}
            drafted = sum(o.done.draft_tokens for o in results["on"])
            accepted = sum(o.done.draft_accepted for o in results["on"])
            same = all(a.text == b.text for a, b in zip(results["off"], results["on"], strict=True))
            print(
                f"| {streams} | {rate['off']:.1f} | {rate['on']:.1f} | {rate['on'] / rate['off']:.2f}x | {drafted} "
                f"| {accepted} | {accepted / max(1, drafted):.0%} | {same} |"
            )
    finally:
        engine.close()


if __name__ == "__main__":
    main()
