"""Drafts for speculative decoding, looked up in the request's own tokens (prompt lookup / n-gram).

An edit copies long spans of the page in its prompt, and code repeats itself. When the last few
tokens of prompt + reply occurred before, the tokens that followed them then are a good guess at
what follows now. The scheduler verifies such a guess in the same ``llama_decode`` as everything
else and keeps what the model agrees with (scheduler.py).

Once a draft is taken from a place, the copy goes on from that same place for as long as the reply
keeps matching it, whatever a later occurrence of the tail says. A page repeats its structure
(cards, sections, list items of the same markup): the latest occurrence of a 12-token tail of
markup is then usually another card, whose names and numbers differ, while the reply is copying
this one. On a whole-page copy of bench.site's page (``python -m bench.lookup_replay``) this took
the share of drafts accepted from 65 % to 100 %, and the rows decoded per token from 1.51 to 1.00.
"""

from __future__ import annotations

# Only a long tail that occurred before is taken as the start of a copy (12 tokens, as
# llama-server's ngram-simple): short tails recur all over a page's markup, drafts started from
# them are mostly rejected, and on a CPU each rejected draft token costs nearly a token's compute
# (bench.draft_cost).
NGRAM_MAX = 12
NGRAM_MIN = 12


class NgramLookup:
    """The tokens of one request (prompt and reply) and, for each n-gram of them, where it last
    ended with a token after it."""

    def __init__(self, tokens: list[int], ngram_max: int = NGRAM_MAX, ngram_min: int = NGRAM_MIN) -> None:
        self.ngram_max = ngram_max
        self.ngram_min = ngram_min
        self.tokens: list[int] = []
        # (n-gram) -> index of the token that followed its latest occurrence
        self._follows: dict[tuple[int, ...], int] = {}
        # The copy being drafted: the index of the token it expects next, while every token added
        # since the last draft matched the place that draft came from.
        self._copy: int | None = None
        for token in tokens:
            self.add(token)

    def add(self, token: int) -> None:
        tokens = self.tokens
        end = len(tokens)  # the n-grams ending here now have a token after them
        for n in range(self.ngram_min, self.ngram_max + 1):
            if n <= end:
                self._follows[tuple(tokens[end - n : end])] = end
        tokens.append(token)
        copy = self._copy
        self._copy = copy + 1 if copy is not None and tokens[copy] == token else None

    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens: the copy in progress continued, or else what followed the longest
        earlier occurrence of the current tail."""
        if limit <= 0:
            return []
        tokens = self.tokens
        end = len(tokens)
        start = self._copy
        n = min(self.ngram_max, end)
        while start is None and n >= self.ngram_min:
            start = self._follows.get(tuple(tokens[end - n : end]))
            n -= 1
        if start is None or start >= end:
            self._copy = None
            return []
        self._copy = start
        return tokens[start : min(start + limit, end)]
