"""``python -m spaceserve.prefetch``: put the template's GGUF into HF_HOME while the image builds.

Run by the Dockerfile so that a restart or a wake-up from sleep finds the model in the image.
It never fails the build: when the Hub cannot be reached (or the model is gated and no token
was given) it says so and exits 0, and the server downloads the file at start-up instead.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from .engine.source import ModelSourceError, resolve_model_path
from .settings import ModelSettings, SettingsError, load_settings

log = logging.getLogger("spaceserve.prefetch")
# Where BuildKit mounts the Space secret HF_TOKEN during `RUN --mount=type=secret,id=HF_TOKEN`.
BUILD_SECRET = Path("/run/secrets/HF_TOKEN")


def build_token(settings: ModelSettings, secret_file: Path = BUILD_SECRET) -> str | None:
    if settings.hf_token is not None:
        return settings.hf_token.get_secret_value()
    try:
        return secret_file.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def prefetch(secret_file: Path = BUILD_SECRET) -> Path | None:
    """The cached GGUF, or None when there is nothing to fetch or it could not be fetched."""
    try:
        settings = load_settings(ModelSettings)
    except SettingsError as exc:
        log.warning("not prefetching the model: %s", exc)
        return None
    if not settings.model_source.startswith("hf://"):
        log.info("MODEL_SOURCE=%s is not a Hub file; nothing to prefetch", settings.model_source)
        return None
    try:
        path = resolve_model_path(
            settings.model_source, hf_token=build_token(settings, secret_file), cache_dir=settings.model_cache_dir
        )
    except ModelSourceError as exc:
        log.warning("could not prefetch the model (%s); the server will download it at start-up", exc)
        return None
    log.info("model cached at %s (%.0f MB)", path, path.stat().st_size / 1e6)
    return path


def main() -> int:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "info").upper(), format="%(name)s: %(message)s")
    prefetch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
