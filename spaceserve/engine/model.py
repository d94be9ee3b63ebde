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
# llama.cpp's token attributes: the texts it reads as tokens only when asked to parse special
# tokens (user-defined ones, such as Gemma's whitespace runs, it matches in any text), and the two
# that swallow whitespace beside the token.
SPECIAL = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
LSTRIP = llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP
RSTRIP = llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP


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
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):  # cgroup v2, v1
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 writes a huge number for "no limit"
            return int(text)
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
        self._specials = self._special_tokens()
        self._partitions: dict[str, tuple[int | str, ...]] = {}

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
        return self._with_bos(self._tokenize(text, parse_special))

    def tokenize_segments(self, segments: list[tuple[str, bool]]) -> list[int]:
        """Tokens of the joined ``(text, is_content)`` segments, control tokens only from the others.

        What llama.cpp does for the joined text with special-token parsing: cut it at every control
        token's text, tokenize each stretch of text between them on its own. Here only the markup
        is searched for control tokens, so the stretches (markup text around a content, the content
        itself) are the same as before for any content that holds no control-token text.
        """
        fragments: list[int | str] = []
        stretch: list[str] = []
        strip_next = False  # the last control token swallows the whitespace after it (RSTRIP)
        for text, is_content in segments:
            for part in (text,) if is_content else self._partition(text):
                if isinstance(part, str):
                    if strip_next:
                        part = part.lstrip()
                        strip_next = not part
                    stretch.append(part)
                    continue
                joined = "".join(stretch)
                if self._specials[part][1] & LSTRIP:  # ... or the whitespace before it
                    joined = joined.rstrip()
                if joined:
                    fragments.append(joined)
                stretch.clear()
                fragments.append(part)
                strip_next = bool(self._specials[part][1] & RSTRIP)
        if "".join(stretch):
            fragments.append("".join(stretch))
        tokens: list[int] = []
        for fragment in fragments:
            if isinstance(fragment, int):
                tokens.append(fragment)
            else:
                tokens.extend(self._tokenize(fragment, parse_special=False))
        return self._with_bos(tokens)

    def _partition(self, markup: str) -> tuple[int | str, ...]:
        """``markup`` cut at control-token texts as llama.cpp cuts it: longest token text first."""
        cached = self._partitions.get(markup)
        if cached is not None:
            return cached
        parts: list[int | str] = [markup]
        for token, (text, _attr) in self._specials.items():
            if text not in markup:
                continue
            cut: list[int | str] = []
            for part in parts:
                if isinstance(part, int) or text not in part:
                    cut.append(part)
                    continue
                for k, piece in enumerate(part.split(text)):
                    if k:
                        cut.append(token)
                    if piece:
                        cut.append(piece)
            parts = cut
        result = tuple(parts)
        if len(self._partitions) < 4096:  # a template has a handful of distinct markup pieces
            self._partitions[markup] = result
        return result

    def _special_tokens(self) -> dict[int, tuple[str, int]]:
        """Token id -> (text, attributes) of the control tokens, longest text first (llama.cpp's order)."""
        found = []
        for token in range(self.n_vocab):
            attr = int(llama_cpp.llama_vocab_get_attr(self.vocab, token))
            if attr & SPECIAL:
                raw = llama_cpp.llama_vocab_get_text(self.vocab, token)
                text = raw.decode("utf-8", errors="replace") if raw else ""
                if text:
                    found.append((len(raw), token, text, attr))
        found.sort(key=lambda item: -item[0])  # stable: equal lengths keep id order
        return {token: (text, attr) for _, token, text, attr in found}

    def _tokenize(self, text: str, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, False, parse_special)
        if n < 0:
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, False, parse_special)
        return list(buf[:n])

    def _with_bos(self, tokens: list[int]) -> list[int]:
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
