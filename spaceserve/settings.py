"""Settings for every app mode, read from the environment and the template's settings file.

Environment variables win over the template file (``spaces/<SPACE_TEMPLATE>/settings.env``),
so a Space variable or secret can override anything the template ships.
Names are explicit (``MODEL_SOURCE``, ``PARALLEL_SLOTS``) so they do not collide with other
variables a Space or a shell may carry.
"""

from __future__ import annotations

import ipaddress
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ROOT_DIR = Path(__file__).resolve().parent.parent
SPACES_DIR = ROOT_DIR / "spaces"

# Any folder under spaces/ is a template (a user adds one by copying a folder), so the name is
# checked for shape here, not against a list.
TEMPLATE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class SettingsError(Exception):
    """A setting has a value the app cannot start with; the message names the variable."""


class CommonSettings(BaseSettings):
    """What every mode shares: where to listen, who may call, how to log."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, env_file_encoding="utf-8")

    space_template: Annotated[str, Field(pattern=TEMPLATE_PATTERN)] | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    api_keys_file: Path | None = None
    # On a public Space a server without keys refuses completions unless this says otherwise.
    allow_unauthenticated: bool = False
    space_id: str | None = None  # set by Hugging Face on every Space
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("space_template", mode="before")
    @classmethod
    def _blank_template(cls, value: object) -> object:
        return None if value == "" else value

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
    model_aliases: Annotated[list[str], NoDecode] = Field(default_factory=list)
    model_cache_dir: Path | None = None
    hf_token: SecretStr | None = None
    chat_template: str = "auto"
    chat_template_file: Path | None = None
    context_size: int = Field(default=4096, ge=64)
    parallel_slots: int = Field(default=4, ge=1, le=64)
    batch_size: int = Field(default=512, ge=8)
    cpu_cores: int | None = Field(default=None, ge=1)
    max_queue: int = Field(default=32, ge=0)
    request_timeout: float = Field(default=600.0, gt=0)
    warmup: bool = True

    @field_validator("model_aliases", mode="before")
    @classmethod
    def _split_aliases(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("cpu_cores", mode="before")
    @classmethod
    def _blank_cores(cls, value: object) -> object:
        return None if value == "" else value

    def threads(self) -> int:
        """Threads for llama.cpp: ``CPU_CORES`` (set by Spaces), else the cores this process may use."""
        if self.cpu_cores:
            return self.cpu_cores
        return usable_cpu_count()


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
        shown = "<hidden>" if field in _SECRET_FIELDS else repr(item.get("input"))
        lines.append(f"{field.upper()}: {item['msg']} (got {shown})")
    return "invalid settings:\n  " + "\n  ".join(lines)


SettingsT = TypeVar("SettingsT", bound=CommonSettings)
_SECRET_FIELDS = {"api_keys", "hf_token"}


def load_settings(cls: type[SettingsT], **overrides: Any) -> SettingsT:
    """Build ``cls`` from the environment and the template file; explain bad values by name."""
    template = os.environ.get("SPACE_TEMPLATE") or overrides.get("space_template")
    env_file = template_settings_file(str(template) if template else None)
    try:
        return cls(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from exc
