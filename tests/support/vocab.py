"""The embedded model's vocabulary only (no weights, no context), for tests that need token ids."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import llama_cpp


@contextmanager
def load_vocab(model_path: Path) -> Iterator[Any]:
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), params)
    assert model, f"could not load the vocabulary of {model_path}"
    try:
        yield llama_cpp.llama_model_get_vocab(model)
    finally:
        llama_cpp.llama_model_free(model)


def tokenize(vocab: Any, text: str) -> list[int]:
    """Token ids of ``text`` as it is (no BOS, special tokens not parsed)."""
    data = text.encode()
    buf = (llama_cpp.llama_token * (len(data) + 8))()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(data) + 8, False, False)
    return list(buf[:n])
