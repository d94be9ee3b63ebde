"""Prompts of the site generator's shape, sized in the benchmarked model's own tokens.

The generator (DeepSite's shape, see tests/e2e/test_site_generator.py) sends one system message of
rules (about 1,800-2,700 tokens), for an edit the whole current page inside it, and an instruction;
it wants a whole page or SEARCH/REPLACE blocks back.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

RULE_TOPICS = (
    "Use TailwindCSS from its CDN for every style; never write a <style> block unless asked.",
    "Answer with one complete HTML document, from <!DOCTYPE html> to </html>, and nothing else.",
    "Every image is a placeholder from a free image service, with width, height and alt text.",
    "Use semantic landmarks: header, nav, main, section, article, aside and footer where they fit.",
    "Interactive parts use small vanilla JavaScript at the end of the body; no frameworks.",
    "Make it responsive: mobile first, with md: and lg: breakpoints for wider screens.",
    "Keep colour contrast at WCAG AA or better; label every form field and button.",
)
EDIT_RULES = (
    "To edit, answer with blocks of the form <<<<<<< SEARCH, the exact lines to find, =======, "
    "the lines that replace them, >>>>>>> REPLACE. The SEARCH part must match the page byte for byte. "
)
PRODUCTS = (
    ("Country sourdough", "a long-fermented loaf with a dark, blistered crust and an open crumb", "4.50"),
    ("Dark rye with seeds", "dense Danish-style rye with sunflower, flax and pumpkin seeds", "5.20"),
    ("Spelt and honey", "a soft wholegrain loaf sweetened with honey from the hills above town", "4.80"),
    ("Cardamom buns", "knotted Swedish buns rolled in cardamom sugar, baked every hour", "3.10"),
    ("Lemon drizzle", "a tall sponge soaked in lemon syrup under a crackling sugar top", "3.60"),
    ("Chocolate torte", "flourless and rich, with a thin layer of salted caramel, weekends only", "4.90"),
    ("Olive focaccia", "Ligurian focaccia with green olives, rosemary and flaky sea salt", "4.20"),
    ("Almond croissant", "twice-baked with frangipane and toasted almond flakes", "3.40"),
)
PEOPLE = ("Maria from the harbour office", "Tom, a regular since 2012", "Aisha, who orders every Friday")


def rules(length: int, extra: str = "") -> str:
    """A system prompt of rules, ``length`` characters long."""
    text = "You are an expert web developer who builds whole sites from one request. " + extra
    n = 0
    while len(text) < length:
        text += f"Rule {n + 1}: {RULE_TOPICS[n % len(RULE_TOPICS)]} "
        n += 1
    return text[:length]


def section(n: int) -> str:
    name, about, price = PRODUCTS[n % len(PRODUCTS)]
    person = PEOPLE[n % len(PEOPLE)]
    return (
        f'<section id="item-{n}" class="py-16 px-6 md:px-12 bg-white odd:bg-slate-50">\n'
        f'  <h2 class="text-3xl font-bold text-slate-900 mb-4">{name}</h2>\n'
        f'  <p class="text-lg text-slate-600 leading-relaxed">{about.capitalize()}. '
        f"Batch {n} comes out of the stone oven at {6 + n % 9}:{15 * (n % 4):02d}.</p>\n"
        f'  <img src="https://picsum.photos/seed/{n}/640/360" alt="{name}" width="640" height="360" '
        'class="rounded-xl shadow-lg mt-6">\n'
        f'  <blockquote class="mt-6 italic text-slate-500">"The {name.lower()} is why I cross town." - {person}'
        "</blockquote>\n"
        f'  <a href="#order" class="inline-block mt-6 px-5 py-3 rounded-lg bg-amber-600 text-white">'
        f"Order for {price}</a>\n"
        "</section>\n"
    )


def page(sections: int) -> str:
    """A Tailwind landing page of ``sections`` product sections, like the pages the generator edits."""
    body = "".join(section(n) for n in range(sections))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Harbour Bakery</title>\n'
        '<script src="https://cdn.tailwindcss.com"></script>\n</head>\n<body class="font-sans">\n'
        f"{body}</body>\n</html>\n"
    )


def page_kb(kilobytes: int) -> str:
    """A page of about ``kilobytes`` KB."""
    n = 1
    while len(page(n)) < kilobytes * 1000:
        n += 1
    return page(n)


@cache
def vocab(model: Path):  # type: ignore[no-untyped-def]
    from llama_cpp import Llama

    return Llama(model_path=str(model), vocab_only=True, verbose=False)


def count_tokens(model: Path, text: str) -> int:
    """Tokens of ``text`` in ``model``'s vocabulary (the vocabulary only is loaded)."""
    return len(vocab(model).tokenize(text.encode(), add_bos=False, special=False))


def sized(model: Path, make: Callable[[int], str], tokens: int) -> str:
    """``make(n)`` for the smallest n whose text has at least ``tokens`` tokens."""
    low, high = 1, 1
    while count_tokens(model, make(high)) < tokens:
        low, high = high, high * 2
    while low < high:
        mid = (low + high) // 2
        if count_tokens(model, make(mid)) < tokens:
            low = mid + 1
        else:
            high = mid
    return make(high)
