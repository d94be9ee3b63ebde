"""Drafts for speculative decoding, looked up in the request's own tokens (prompt lookup / n-gram).

An edit copies long spans of the page in its prompt, and code repeats itself. When the last few
tokens of prompt + reply occurred before, the tokens that followed them then are a good guess at
what follows now. The scheduler verifies such a guess in the same ``llama_decode`` as everything
else and keeps what the model agrees with (scheduler.py).
"""

from __future__ import annotations

# Only a long tail that occurred before is taken as the start of a copy: with 12 tokens (as
# llama-server's ngram-simple) the drafts of an edit were accepted 98 % of the time, with 2-3
# tokens 62 % (bench.site on the embedded model), and on a CPU each rejected draft token costs
# nearly a token's compute.
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
        for token in tokens:
            self.add(token)

    def add(self, token: int) -> None:
        tokens = self.tokens
        end = len(tokens)  # the n-grams ending here now have a token after them
        for n in range(self.ngram_min, self.ngram_max + 1):
            if n <= end:
                self._follows[tuple(tokens[end - n : end])] = end
        tokens.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens that followed the longest earlier occurrence of the current tail."""
        if limit <= 0:
            return []
        tokens = self.tokens
        end = len(tokens)
        for n in range(min(self.ngram_max, end), self.ngram_min - 1, -1):
            start = self._follows.get(tuple(tokens[end - n : end]))
            if start is not None:
                return tokens[start : min(start + limit, end)]
        return []
