"""A GGUF loaded through llama-cpp-python's low-level API: model, vocabulary, one shared context.

Only this module and the scheduler touch ctypes; everything above speaks token lists and bytes.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import llama_cpp
from llama_cpp import _logger as llama_logger

from .types import ModelLoadError

log = logging.getLogger("spaceserve.model")


KVType = Literal["f16", "q8_0"]
KV_TYPES: dict[str, tuple[int, float]] = {  # ggml type, bytes per element
    "f16": (llama_cpp.GGML_TYPE_F16, 2.0),
    "q8_0": (llama_cpp.GGML_TYPE_Q8_0, 34 / 32),  # blocks of 32 int8 plus one f16 scale
}
# Memory beyond the weights and the KV cache: llama.cpp's compute buffers, Python, the web server.
OVERHEAD_BYTES = 1 << 30


@dataclass(frozen=True)
class ContextShape:
    """How the shared context is laid out: ``slots`` sequences of up to ``per_slot`` tokens each.

    ``pool`` is the number of KV cells. At ``per_slot * slots`` (or 0) each slot owns a KV stream of
    its own; fewer makes one pool the slots share, each sequence taking cells as it grows.
    """

    per_slot: int
    slots: int
    batch: int
    threads: int
    pool: int = 0
    kv_type: KVType = "f16"

    @property
    def pooled(self) -> bool:
        return 0 < self.pool < self.per_slot * self.slots

    @property
    def cells(self) -> int:
        return self.pool if self.pooled else self.per_slot * self.slots


def memory_limit() -> int:
    """Bytes this process may use: the cgroup's limit when there is one, else the machine's memory."""
    for path, scale in (("/sys/fs/cgroup/memory.max", 1), ("/sys/fs/cgroup/memory/memory.limit_in_bytes", 1)):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text) * scale
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


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
        if shape.pool and shape.pool < per_slot:
            llama_cpp.llama_model_free(model)
            raise ModelLoadError(
                f"KV_CACHE_TOKENS={shape.pool} cannot hold one request of CONTEXT_SIZE={per_slot} tokens; "
                f"set KV_CACHE_TOKENS to at least {per_slot}"
            )
        shape = replace(shape, per_slot=per_slot)
        self.shape = replace(shape, batch=min(shape.batch, shape.cells))
        self.kv_bytes_per_token = self._kv_bytes_per_token(shape.kv_type)
        self._check_memory(path)

        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = self.shape.cells
        cparams.n_batch = self.shape.batch
        cparams.n_ubatch = self.shape.batch
        cparams.n_seq_max = self.shape.slots
        cparams.n_threads = self.shape.threads
        cparams.n_threads_batch = self.shape.threads
        # Separate streams (the default, as llama-server): attention spans only the slot's own cells.
        # A pool (KV_CACHE_TOKENS below slots x CONTEXT_SIZE) lets one long request use cells the
        # short ones leave, but every decode attends over the pool's used range (measured slower
        # when the pool holds no long sequence: cold 1k-token prefill 0.91x, single stream 1.07x in
        # favour of separate streams, bench.compare, 3 rounds, 2 vCPU).
        cparams.kv_unified = self.shape.pooled
        ggml_type, _ = KV_TYPES[self.shape.kv_type]
        cparams.type_k = ggml_type
        cparams.type_v = ggml_type
        if self.shape.kv_type != "f16":
            cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED  # a quantised V needs it
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

    def _kv_bytes_per_token(self, kv_type: KVType) -> int:
        """K and V bytes one token takes in every layer, from the GGUF's attention shape."""
        arch = self.meta("general.architecture") or ""

        def number(key: str, default: int = 0) -> int:
            value = self.meta(f"{arch}.{key}")
            try:
                return int(value) if value is not None else default
            except ValueError:
                return default

        layers = number("block_count")
        heads = number("attention.head_count", 1)
        kv_heads = number("attention.head_count_kv", heads)
        head_dim = number("embedding_length") // max(1, heads)
        k_dim = number("attention.key_length", head_dim)
        v_dim = number("attention.value_length", head_dim)
        return int(layers * kv_heads * (k_dim + v_dim) * KV_TYPES[kv_type][1])

    def describe_kv(self) -> str:
        shape = self.shape
        layout = f"a pool of {shape.cells} tokens" if shape.pooled else f"{shape.slots} x {shape.per_slot} tokens"
        return f"{layout}, {shape.kv_type}, {shape.cells * self.kv_bytes_per_token / (1 << 30):.2f} GiB"

    def _check_memory(self, path: Path) -> None:
        """Refuse a KV cache that cannot fit beside the weights, saying what would fit."""
        shape = self.shape
        kv = shape.cells * self.kv_bytes_per_token
        limit = memory_limit()
        room = limit - path.stat().st_size - OVERHEAD_BYTES
        log.info("KV cache: %s; memory limit %.1f GiB", self.describe_kv(), limit / (1 << 30))
        if kv <= room:
            return
        fits = max(0, room // max(1, self.kv_bytes_per_token))
        llama_cpp.llama_model_free(self.model)
        raise ModelLoadError(
            f"the KV cache needs {kv / (1 << 30):.1f} GiB ({shape.cells} tokens x "
            f"{self.kv_bytes_per_token // 1024} KiB, {shape.kv_type}) but only {room / (1 << 30):.1f} GiB is left "
            f"beside the weights of the {limit / (1 << 30):.1f} GiB this process may use: at most {fits} tokens "
            f"fit; lower KV_CACHE_TOKENS (or CONTEXT_SIZE x PARALLEL_SLOTS), or set KV_CACHE_TYPE=q8_0 to halve it"
        )

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
