"""Build llama.cpp's own ``llama-server`` from the llama.cpp source that the pinned
llama-cpp-python source distribution carries, so both servers run the same llama.cpp.

The binary is cached under ``~/.cache/spaceserve-bench/`` and reused by later runs.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

CACHE = Path.home() / ".cache" / "spaceserve-bench"


def llama_server_path() -> Path:
    return CACHE / f"llama-server-{version('llama-cpp-python')}"


def build(jobs: int = 2) -> Path:
    """Return the cached binary, building it first if needed (about 5–10 minutes on 2 cores)."""
    target = llama_server_path()
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    pinned = version("llama-cpp-python")
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        work = Path(tmp)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={pinned}",
                "-d",
                str(work),
            ],
            check=True,
        )
        sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as archive:
            archive.extractall(work, filter="data")
        source = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
        build_dir = work / "build"
        subprocess.run(
            [
                "cmake",
                "-S",
                str(source),
                "-B",
                str(build_dir),
                "-DCMAKE_BUILD_TYPE=Release",
                "-DLLAMA_BUILD_SERVER=ON",
                "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF",
                "-DLLAMA_OPENSSL=OFF",
                "-DBUILD_SHARED_LIBS=OFF",
                "-DGGML_NATIVE=ON",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(
            ["cmake", "--build", str(build_dir), "--target", "llama-server", "-j", str(jobs)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (build_dir / "bin" / "llama-server").rename(target)
    return target


if __name__ == "__main__":
    print(build())
