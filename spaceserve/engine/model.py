"""A GGUF loaded through llama-cpp-python's low-level API: model, vocabulary, one shared context.

Only this module and the scheduler touch ctypes; everything above speaks token lists and bytes.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
from llama_cpp import _logger as llama_logger

from .types import ModelLoadError

log = logging.getLogger("spaceserve.model")


@dataclass(frozen=True)
class ContextShape:
    """How the shared context is laid out: ``slots`` sequences of up to ``per_slot`` tokens each."""

    per_slot: int
    slots: int
    batch: int
    threads: int


class LoadedModel:
    def __init__(self, path: Path, shape: ContextShape, *, verbose: bool = False) -> None:
        # llama.cpp prints every tensor at load; keep its chatter out of the logs unless debugging.
        llama_logger.set_verbose(verbose)
        llama_cpp.llama_backend_init()
        self.path = path
        mparams = llama_cpp.llama_model_default_params()
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            raise ModelLoadError(
                f"llama.cpp could not load {path}: the file is corrupt, truncated or of an unsupported "
                "architecture; point MODEL_SOURCE at a valid GGUF"
            )
        self.model = model
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(model)
        per_slot = shape.per_slot
        if self.n_ctx_train > 0 and per_slot > self.n_ctx_train:
            log.warning(
                "CONTEXT_SIZE %d exceeds the model's training context %d; using %d",
                per_slot,
                self.n_ctx_train,
                self.n_ctx_train,
            )
            per_slot = self.n_ctx_train
        self.shape = ContextShape(per_slot, shape.slots, min(shape.batch, per_slot * shape.slots), shape.threads)

        cparams = llama_cpp.llama_context_default_params()
        # One KV stream per slot, as llama-server does: attention then spans only the slot's own
        # cells. A unified cache would share prefixes without copying, but every decode attends
        # over the whole cache's used range (measured slower: cold 1k-token prefill 0.91x, single
        # stream 1.07x in favour of separate streams, bench.compare, 3 rounds, 2 vCPU).
        cparams.n_ctx = self.shape.per_slot * self.shape.slots
        cparams.n_batch = self.shape.batch
        cparams.n_ubatch = self.shape.batch
        cparams.n_seq_max = self.shape.slots
        cparams.n_threads = self.shape.threads
        cparams.n_threads_batch = self.shape.threads
        cparams.kv_unified = False
        # Keep the full sliding-window cache (Gemma 3) so cached prefixes stay reusable.
        cparams.swa_full = True
        cparams.no_perf = True
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise ModelLoadError(
                f"llama.cpp could not create a context of {cparams.n_ctx} tokens for {path}; "
                "lower CONTEXT_SIZE or PARALLEL_SLOTS"
            )
        self.ctx = ctx
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.architecture = self.meta("general.architecture") or "unknown"
        self.bos = llama_cpp.llama_vocab_bos(self.vocab)
        self.eos = llama_cpp.llama_vocab_eos(self.vocab)
        self.eot = llama_cpp.llama_vocab_eot(self.vocab)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)

    def meta(self, key: str) -> str | None:
        size = 1 << 16
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, size)
        if n < 0:
            return None
        if n >= size:
            buf = ctypes.create_string_buffer(n + 1)
            llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, n + 1)
        return buf.value.decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        return str(llama_cpp.llama_vocab_get_text(self.vocab, token).decode("utf-8", errors="replace"))

    def tokenize(self, text: str, *, parse_special: bool = True) -> list[int]:
        """Tokens of ``text`` with BOS in front when the model wants one (and it is not there yet)."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, False, parse_special)
        if n < 0:
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, False, parse_special)
        tokens = list(buf[:n])
        if self.add_bos and (not tokens or tokens[0] != self.bos):
            tokens.insert(0, self.bos)
        return tokens

    def single_token(self, text: str) -> int | None:
        data = text.encode("utf-8")
        buf = (llama_cpp.llama_token * 4)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, 4, False, True)
        return buf[0] if n == 1 else None

    def piece(self, token: int) -> bytes:
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        n = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece_buf, len(self._piece_buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
            data = buf.raw[:n]
        else:
            data = self._piece_buf.raw[:n]
        self._pieces[token] = data
        return data

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def close(self) -> None:
        if getattr(self, "ctx", None):
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            llama_cpp.llama_model_free(self.model)
            self.model = None
