"""Per-request sampling: a llama.cpp sampler chain built from the request's parameters.

Without a grammar one chain does everything inside ``llama_sampler_sample``. With a grammar
(``response_format``), checking all of Gemma 3's 262k tokens against it takes about 40 ms, more
than a whole decode step, and the step is shared by every stream in the batch. So the grammar
first sees only the best-ranked candidates; the whole vocabulary is checked only when those
leave too few (none for greedy decoding, fewer than ``top_k`` otherwise, unless the rest is far
too unlikely to be sampled: under ``min_p`` of the best allowed token's odds, or e^-12). Tokens are
then drawn from the distribution the grammar-first chain would give (exactly with ``top_k`` or
``min_p``; up to tokens under e^-12 of the best one's odds otherwise).
"""

from __future__ import annotations

import ctypes
import math
import random

import llama_cpp
import numpy as np
import numpy.typing as npt

from .types import SamplingParams

PENALTY_WINDOW = 64  # tokens the repeat/frequency/presence penalties look back over, as llama.cpp's default
SHORTLIST = 256  # candidates checked against the grammar before the whole vocabulary
# A candidate this far (in logits) below the best one the grammar allows has odds under e^-12.
NEGLIGIBLE_GAP = 12.0
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class GrammarError(ValueError):
    """llama.cpp could not parse a grammar (a bug in the schema translation)."""


def grammar_parses(grammar: str) -> bool:
    """Whether llama.cpp accepts ``grammar`` (it refuses, e.g., a rule that can recurse on itself
    before reading a character)."""
    sampler = llama_cpp.llama_sampler_init_grammar(None, grammar.encode(), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


def _chain(samplers: list[llama_cpp.llama_sampler_p]) -> llama_cpp.llama_sampler_p:
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    for sampler in samplers:
        llama_cpp.llama_sampler_chain_add(chain, sampler)  # the chain owns it from here
    return chain


def raw_logits(ctx: llama_cpp.llama_context_p, index: int, n_vocab: int) -> npt.NDArray[np.float32]:
    """The model's logits for batch output ``index`` (a view into llama.cpp's buffer)."""
    pointer = llama_cpp.llama_get_logits_ith(ctx, index)
    return np.ctypeslib.as_array(pointer, shape=(n_vocab,))


def log_probs(logits: npt.NDArray[np.float32], token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """log-softmax of the raw logits: the token's value and the ``top`` best (id, value), best first."""
    peak = float(logits.max())
    norm = peak + math.log(float(np.exp(logits - peak).sum()))
    best: list[tuple[int, float]] = []
    if top > 0:
        ids = np.argpartition(-logits, top)[:top]
        ids = ids[np.argsort(-logits[ids], kind="stable")]
        best = [(int(i), float(logits[i]) - norm) for i in ids]
    return float(logits[token]) - norm, best


class Sampler:
    """Owns one request's samplers; ``sample`` also records the token (penalties, grammar)."""

    def __init__(
        self, params: SamplingParams, history: list[int], vocab: llama_cpp.llama_vocab_p, n_vocab: int
    ) -> None:
        self.n_vocab = n_vocab
        self.params = params
        pre: list[llama_cpp.llama_sampler_p] = []
        if params.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(params.logit_bias))()
            for i, (token, bias) in enumerate(params.logit_bias):
                biases[i].token = token
                biases[i].bias = bias
            pre.append(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases))
        if params.penalized:
            penalties = llama_cpp.llama_sampler_init_penalties(
                n_vocab, PENALTY_WINDOW, params.repeat_penalty, params.frequency_penalty, params.presence_penalty
            )
            # The penalties look at the end of the prompt too, as llama.cpp's server does (only
            # they: a grammar must not see the prompt).
            for token in history[-PENALTY_WINDOW:]:
                llama_cpp.llama_sampler_accept(penalties, token)
            pre.append(penalties)
        post: list[llama_cpp.llama_sampler_p] = []
        if params.temperature <= 0.0:
            post.append(llama_cpp.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                post.append(llama_cpp.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                post.append(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                post.append(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            post.append(llama_cpp.llama_sampler_init_temp(params.temperature))
            seed = params.seed if params.seed is not None else random.getrandbits(32)
            post.append(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        self._grammar: llama_cpp.llama_sampler_p | None = None
        self._pre: llama_cpp.llama_sampler_p | None = None
        self._shortlist: llama_cpp.llama_sampler_p | None = None
        if params.grammar is None:
            self._chain: llama_cpp.llama_sampler_p | None = _chain(pre + post)
            return
        self._chain = _chain(post)
        self._pre = _chain(pre)
        self._shortlist = llama_cpp.llama_sampler_init_top_k(SHORTLIST)
        grammar = llama_cpp.llama_sampler_init_grammar(vocab, params.grammar.encode(), b"root")
        if not grammar:
            self.close()
            raise GrammarError("llama.cpp could not parse the grammar")
        self._grammar = grammar
        self._data = np.zeros(n_vocab, dtype=TOKEN_DATA)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self.full_checks = 0  # steps that needed the whole vocabulary (for tests and measurements)
        self._array = llama_cpp.llama_token_data_array(
            self._data.ctypes.data_as(llama_cpp.llama_token_data_p), n_vocab, -1, False
        )

    def sample(self, ctx: llama_cpp.llama_context_p, index: int) -> int:
        if self._grammar is None:
            return int(llama_cpp.llama_sampler_sample(self._chain, ctx, index))
        token = self._sample_constrained(raw_logits(ctx, index, self.n_vocab))
        for sampler in (self._pre, self._grammar, self._chain):
            llama_cpp.llama_sampler_accept(sampler, token)
        return token

    def _fill(self, logits: npt.NDArray[np.float32]) -> None:
        self._data["id"] = self._ids
        self._data["logit"] = logits
        self._data["p"] = 0.0
        array = self._array
        array.size = self.n_vocab
        array.selected = -1
        array.sorted = False
        llama_cpp.llama_sampler_apply(self._pre, ctypes.byref(array))

    def _sample_constrained(self, logits: npt.NDArray[np.float32]) -> int:
        array, data = self._array, self._data
        self._fill(logits)
        llama_cpp.llama_sampler_apply(self._shortlist, ctypes.byref(array))
        size = array.size
        frontier = float(data["logit"][size - 1])
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))
        short = data[:size]
        allowed = short[np.isfinite(short["logit"])]
        if len(allowed) and self._shortlist_suffices(len(allowed), float(allowed["logit"][0]), size, frontier):
            data[: len(allowed)] = allowed  # still sorted best first
            array.size = len(allowed)
            array.sorted = True
        else:
            self.full_checks += 1
            self._fill(logits)
            llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(array))
        return int(data["id"][array.selected])

    def _shortlist_suffices(self, allowed: int, best: float, size: int, frontier: float) -> bool:
        """Whether the grammar-first chain could only pick from the allowed shortlisted tokens."""
        params = self.params
        if params.temperature <= 0.0:
            return True  # greedy: the best allowed token is in the shortlist
        if size < SHORTLIST:
            return True  # the shortlist was everything left
        if params.top_k > 0 and allowed >= params.top_k:
            return True  # top_k keeps exactly these
        gap = NEGLIGIBLE_GAP
        if params.min_p > 0.0 and params.top_p >= 1.0:
            # min_p drops every token whose odds are under min_p of the best allowed one's.
            gap = min(gap, -math.log(params.min_p))
        return best - frontier >= gap

    def close(self) -> None:
        for name in ("_chain", "_pre", "_shortlist", "_grammar"):
            sampler = getattr(self, name, None)
            if sampler is not None:
                llama_cpp.llama_sampler_free(sampler)
                setattr(self, name, None)
