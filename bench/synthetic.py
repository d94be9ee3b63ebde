"""The production-size model without the Hub: a random-weight GGUF of deepseek-coder-1.3b-instruct's
exact shape, quantised to Q4_K_M. Its text is nonsense; its speed and memory are the real model's.

``../shared/tools/synth_gguf.py`` (beside this repository) writes the f16 file with the ``gguf``
package; llama-cpp-python's own ``llama_model_quantize`` (the pinned llama.cpp, the same source
``bench/llama_server.py`` builds llama-server from) makes the Q4_K_M. Both are cached under
``~/.cache/spaceserve-bench/`` and reused.

    python -m bench.synthetic          # prints the path, building it first if needed
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

from .llama_server import CACHE
from .servers import QUANTISED_NAME

REPO = Path(__file__).resolve().parent.parent
SYNTH_SCRIPT = REPO.parent / "shared" / "tools" / "synth_gguf.py"
QUANTISED = CACHE / QUANTISED_NAME


def synthetic_model() -> Path:
    """The cached Q4_K_M file, written first if needed (a few minutes, 2.7 GB of scratch space)."""
    if QUANTISED.is_file():
        return QUANTISED
    if not SYNTH_SCRIPT.is_file():
        raise SystemExit(f"{SYNTH_SCRIPT} is missing: it writes the synthetic model")
    CACHE.mkdir(parents=True, exist_ok=True)
    f16 = CACHE / "deepseek-coder-1.3b-shape.f16.gguf"
    subprocess.run([sys.executable, str(SYNTH_SCRIPT), str(f16)], check=True)
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    partial = QUANTISED.with_suffix(".partial")
    rc = llama_cpp.llama_model_quantize(str(f16).encode(), str(partial).encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed with {rc}")
    partial.rename(QUANTISED)
    f16.unlink()
    return QUANTISED


if __name__ == "__main__":
    print(synthetic_model())
