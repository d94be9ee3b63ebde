"""Per-request sampling: a llama.cpp sampler chain built from the request's parameters."""

from __future__ import annotations

import random

import llama_cpp

from .types import SamplingParams

PENALTY_WINDOW = 64  # tokens the repeat/frequency/presence penalties look back over, as llama.cpp's default


class Sampler:
    """Owns one llama.cpp sampler chain; ``sample`` also records the token for the penalties."""

    def __init__(self, params: SamplingParams, history: list[int], n_vocab: int) -> None:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self._chain = chain
        add = llama_cpp.llama_sampler_chain_add
        if params.penalized:
            add(
                chain,
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab, PENALTY_WINDOW, params.repeat_penalty, params.frequency_penalty, params.presence_penalty
                ),
            )
        if params.temperature <= 0.0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                add(chain, llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
            seed = params.seed if params.seed is not None else random.getrandbits(32)
            add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        if params.penalized:
            # The penalties look at the end of the prompt too, as llama.cpp's server does.
            for token in history[-PENALTY_WINDOW:]:
                llama_cpp.llama_sampler_accept(chain, token)

    def sample(self, ctx: llama_cpp.llama_context_p, index: int) -> int:
        return int(llama_cpp.llama_sampler_sample(self._chain, ctx, index))

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
