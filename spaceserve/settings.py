"""Settings for every app mode, read from the environment and the template's settings file.

Environment variables win over the template file (``spaces/<SPACE_TEMPLATE>/settings.env``),
so a Space variable or secret can override anything the template ships.
Names are explicit (``MODEL_SOURCE``, ``PARALLEL_SLOTS``) so they do not collide with other
variables a Space or a shell may carry.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ROOT_DIR = Path(__file__).resolve().parent.parent
SPACES_DIR = ROOT_DIR / "spaces"

# Any folder under spaces/ is a template (a user adds one by copying a folder), so the name is
# checked for shape here, not against a list.
TEMPLATE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
# Settings whose values are secrets: never echoed in errors, never written in a template file.
SECRET_SETTINGS = frozenset({"API_KEYS", "HF_TOKEN"})
# A template is a proxy (no model, no llama.cpp in its image) when it is named so or lists upstreams.
PROXY_TEMPLATE = "proxy"
UPSTREAM_SETTINGS = ("UPSTREAMS", "UPSTREAMS_FILE")


def serves_proxy(template: str | None, values: Mapping[str, object]) -> bool:
    """The one rule the server (at start) and the image (at build) both follow; ``values`` by upper-case name."""
    return template == PROXY_TEMPLATE or any(values.get(name) for name in UPSTREAM_SETTINGS)


def _split_commas(value: object) -> object:
    return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value


def _blank_as_none(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


# ``A,B,C`` in the environment (blank items dropped); a list when given in code.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_commas)]
# An empty variable (``CPU_CORES=`` in a settings file) means "not set".
BlankAsNone = BeforeValidator(_blank_as_none)


class SettingsError(Exception):
    """A setting has a value the app cannot start with; the message names the variable."""


class RateLimitOverride(BaseModel):
    """One subject's limits; a limit left out keeps the default (RATE_LIMIT_RPM / RATE_LIMIT_TPM)."""

    model_config = ConfigDict(extra="forbid")
    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)


FINGERPRINT = re.compile(r"^[0-9a-f]{8}$")
# A browser origin: scheme, host and optional port, no path (what the Origin header carries).
ORIGIN = re.compile(r"^https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:\d{1,5})?$")


class CommonSettings(BaseSettings):
    """What every mode shares: where to listen, who may call, how to log."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, env_file_encoding="utf-8")

    space_template: Annotated[Annotated[str, Field(pattern=TEMPLATE_PATTERN)] | None, BlankAsNone] = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_keys: Annotated[list[SecretStr], NoDecode, BeforeValidator(_split_commas)] = Field(default_factory=list)
    api_keys_file: Path | None = None
    # On a public Space a server without keys refuses completions unless this says otherwise.
    allow_unauthenticated: bool = False
    space_id: str | None = None  # set by Hugging Face on every Space
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # GET /metrics needs an API key like /v1 unless this is true (for a scraper inside a private network).
    metrics_public: bool = False
    # GET /openapi.json describes the deployment (routes, models, limits): a key unless this is true.
    openapi_public: bool = False
    # Connection limits (docs/security.md): the request line and headers together, the number of
    # header lines, seconds to send them, seconds to send the body, idle keep-alive seconds, and
    # connections at once (beyond it new requests but /health get 503).
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    max_headers: int = Field(default=100, ge=8)
    http_header_timeout: float = Field(default=10.0, gt=0)
    http_body_timeout: float = Field(default=60.0, gt=0)
    keep_alive_timeout: int = Field(default=5, ge=1)
    max_connections: int = Field(default=256, ge=4)
    # Token buckets per API key fingerprint (per client address when no keys are configured); 0 = off.
    rate_limit_rpm: int = Field(default=0, ge=0)
    rate_limit_tpm: int = Field(default=0, ge=0)
    # JSON {"<key fingerprint or client address>": {"rpm": N, "tpm": N}}; fingerprints, never raw keys.
    rate_limit_overrides: Annotated[dict[str, RateLimitOverride], NoDecode] = Field(default_factory=dict)
    # Origins whose pages may call the API from a browser (CORS); "*" for any. Empty: no CORS headers.
    cors_allow_origins: CommaList = Field(default_factory=list)

    @field_validator("cors_allow_origins")
    @classmethod
    def _check_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin == "*" or ORIGIN.match(origin):
                continue
            base = re.match(r"^https?://[^/]+", origin)
            if base and ORIGIN.match(base.group(0)):
                raise ValueError(f"{origin!r} has a path; an origin is scheme, host and port only: {base.group(0)!r}")
            raise ValueError(
                f"{origin!r} is not an origin like https://owner-space.hf.space or http://localhost:3000, nor *"
            )
        # Browsers send the scheme and host in lower case.
        return [origin.lower() for origin in origins]

    @field_validator("rate_limit_overrides", mode="before")
    @classmethod
    def _parse_overrides(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc.msg})") from exc
        if not isinstance(value, dict):
            raise ValueError('expected a JSON object like {"<key fingerprint>": {"rpm": 60, "tpm": 20000}}')
        for subject in value:
            if not (FINGERPRINT.match(str(subject)) or _is_ip(str(subject))):
                raise ValueError(
                    f"{subject!r} is neither a key fingerprint (8 lowercase hex characters, as shown in the "
                    "access log's 'key' field) nor a client IP address"
                )
        return value

    def load_api_keys(self) -> list[str]:
        """All configured keys: ``API_KEYS`` plus one key per line of ``API_KEYS_FILE``."""
        keys = [key.get_secret_value() for key in self.api_keys]
        if self.api_keys_file is not None:
            try:
                text = self.api_keys_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise SettingsError(f"API_KEYS_FILE: cannot read {self.api_keys_file}: {exc.strerror}") from exc
            for line in text.splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(line)
        return keys

    @property
    def on_space(self) -> bool:
        return bool(self.space_id)

    @property
    def loopback_only(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class ModelSettings(CommonSettings):
    """The model server: which GGUF, how to run it, how much it may take on."""

    # embedded | a local path | hf://owner/name[@revision]/path/in/repo.gguf
    model_source: str = "embedded"
    model_id: str | None = None
    # Other names clients may send in `model`; `*` answers any name (as llama-server and TGI do).
    model_aliases: CommaList = Field(default_factory=list)
    model_cache_dir: Path | None = None
    hf_token: SecretStr | None = None
    chat_template: str = "auto"
    chat_template_file: Path | None = None
    context_size: int = Field(default=4096, ge=64)
    # 8 measured best on 2 vCPU (bench.compare --servers ours-2,ours-4,ours-8; see README, Performance).
    parallel_slots: int = Field(default=8, ge=1, le=64)
    batch_size: int = Field(default=512, ge=8)
    # KV cells shared by the slots (0: PARALLEL_SLOTS streams of CONTEXT_SIZE each). Below
    # PARALLEL_SLOTS x CONTEXT_SIZE, one pool: a request waits in the queue until its prompt +
    # max_tokens fit beside the running ones, so a running reply is never cut for room.
    kv_cache_tokens: int = Field(default=0, ge=0)
    kv_cache_type: Literal["f16", "q8_0"] = "f16"
    cpu_cores: Annotated[int | None, BlankAsNone] = Field(default=None, ge=1)
    max_queue: int = Field(default=32, ge=0)
    # max_tokens beyond the room the context leaves: `clamp` to the room (llama-server's way; the
    # reply ends with finish_reason "length"), or `error`, OpenAI's 400 context_length_exceeded.
    max_tokens_overflow: Literal["clamp", "error"] = "clamp"
    request_timeout: float = Field(default=600.0, gt=0)
    warmup: bool = True
    # More messages than this are refused before the template is rendered (docs/security.md).
    max_messages: int = Field(default=1000, ge=1)
    # Text completions: read control-token texts (``<start_of_turn>``) in a prompt as control tokens.
    parse_special_in_prompt: bool = False
    # Speculative decoding from the request's own tokens (docs/performance.md): when the reply's
    # last 12 tokens occurred before, verify up to SPECULATIVE_DRAFT_MAX of the tokens that followed.
    speculative: bool = True
    speculative_draft_max: int = Field(default=48, ge=1, le=128)
    # Run each step with the number of threads (1..CPU_CORES) that is faster now, re-measured every
    # 128 steps: fewer when another process takes CPU time (spaceserve/engine/threads.py).
    adaptive_threads: bool = True

    def threads(self) -> int:
        """Threads for llama.cpp: ``CPU_CORES`` (set by Spaces), else the cores this process may use."""
        if self.cpu_cores:
            return self.cpu_cores
        return usable_cpu_count()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class ProxySettings(CommonSettings):
    """The proxy: which upstreams to forward to and how to treat the ones that fail.

    The upstream list itself (JSON or YAML) is parsed and validated by
    :func:`spaceserve.proxy.config.load_proxy_config`.
    """

    upstreams: Annotated[str | None, BlankAsNone] = None  # inline JSON
    upstreams_file: Annotated[Path | None, BlankAsNone] = None  # JSON, or YAML when the name ends in .yaml/.yml
    # Seconds between background GETs of each upstream's /health; 0 turns them off.
    upstream_probe_interval: float = Field(default=30.0, ge=0)
    upstream_probe_timeout: float = Field(default=5.0, gt=0)
    # An upstream that fails this many times within the window is skipped for the period.
    upstream_cooldown_failures: int = Field(default=3, ge=1)
    upstream_cooldown_window: float = Field(default=60.0, gt=0)
    upstream_cooldown_period: float = Field(default=30.0, gt=0)
    # Cap on an upstream's Retry-After, so one odd header cannot take an upstream out for a day.
    upstream_retry_after_max: float = Field(default=300.0, ge=0)


def usable_cpu_count() -> int:
    """Cores this process may really use: affinity mask, capped by a cgroup CPU quota.

    ``os.cpu_count()`` reports the host's cores, which on a shared Space host is far more
    than the container gets; running that many threads thrashes.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def template_settings_file(template: str | None) -> Path | None:
    if not template:
        return None
    path = SPACES_DIR / template / "settings.env"
    return path if path.is_file() else None


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "settings"
        shown = "<hidden>" if field.upper() in SECRET_SETTINGS else repr(item.get("input"))
        inner = ".".join(str(part) for part in item["loc"][1:])  # where inside a JSON value
        where = f"{field.upper()} ({inner})" if inner else field.upper()
        lines.append(f"{where}: {item['msg']} (got {shown})")
    return "invalid settings:\n  " + "\n  ".join(lines)


SettingsT = TypeVar("SettingsT", bound=CommonSettings)


def load_settings(cls: type[SettingsT], **overrides: Any) -> SettingsT:
    """Build ``cls`` from the environment and the template file; explain bad values by name."""
    template = os.environ.get("SPACE_TEMPLATE") or overrides.get("space_template")
    env_file = template_settings_file(str(template) if template else None)
    try:
        return cls(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from exc
