"""The upstream list: the format users write by hand, its validation, and where keys come from.

The format (JSON or YAML) is either a bare list of tiers or an object::

    {"upstreams": [tier, ...], "aliases": {"client-model": ["tier-or-upstream-name", ...]}}

A tier is one upstream, or a group ``{"name": ..., "replicas": [upstream, ...]}`` of
equivalent upstreams; the group's other fields are defaults for its replicas. Keys are never
written in the list: ``api_key_env`` names the environment variable (a Space secret) that holds
one. Every error names the entry (index and name) and the field, because people edit this by hand.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..settings import ROOT_DIR, ProxySettings, SettingsError

UpstreamKind = Literal["openai", "hf-text-generation"]
CATCH_ALL = "*"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_GROUP_ONLY = ("name", "replicas")


class UpstreamConfig(BaseModel):
    """One backend. Field names are part of the user-facing format; do not rename them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    base_url: str
    api_key_env: str | None = None
    # The model name sent upstream; None passes the client's own model name through.
    model: str | None = None
    kind: UpstreamKind = "openai"
    connect_timeout: float = Field(default=5.0, gt=0)
    first_byte_timeout: float = Field(default=90.0, gt=0)
    total_timeout: float = Field(default=600.0, gt=0)
    enabled: bool = True
    # Background probes: GET health_url (default: base_url without /v1, plus /health).
    health_check: bool = True
    health_url: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    @field_validator("base_url", "health_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError("must be the name of an environment variable (letters, digits, '_'), not a key")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> UpstreamConfig:
        if self.kind == "openai" and not self.base_url.endswith("/v1"):
            raise ValueError("base_url: an OpenAI-compatible upstream's base_url must end in /v1")
        if self.first_byte_timeout > self.total_timeout:
            raise ValueError("first_byte_timeout: must not be longer than total_timeout")
        return self

    def probe_url(self) -> str | None:
        if not self.health_check:
            return None
        if self.health_url:
            return self.health_url
        if self.kind == "openai":
            return self.base_url.removesuffix("/v1") + "/health"
        return None  # a text-generation endpoint has no agreed health route


@dataclass(frozen=True)
class Tier:
    """One step of a chain: its members are equivalent, so any healthy one will do."""

    name: str
    members: tuple[UpstreamConfig, ...]


@dataclass(frozen=True)
class ProxyConfig:
    tiers: tuple[Tier, ...]
    # Client model name -> the tiers to try, in order. CATCH_ALL takes any other name.
    aliases: dict[str, tuple[Tier, ...]]
    explicit_aliases: bool
    keys: Mapping[str, str] = field(default_factory=dict, repr=False)  # upstream name -> key

    def upstreams(self) -> list[UpstreamConfig]:
        return [member for tier in self.tiers for member in tier.members]


# -- loading --------------------------------------------------------------------------------


def load_proxy_config(settings: ProxySettings, environ: Mapping[str, str] | None = None) -> ProxyConfig:
    """Read, validate and resolve the upstream list; raise SettingsError naming entry and field."""
    source, raw = read_upstream_list(settings.upstreams, settings.upstreams_file)
    try:
        return parse_proxy_config(raw, os.environ if environ is None else environ)
    except SettingsError as exc:
        raise SettingsError(f"{source}: {exc}") from None


def read_upstream_list(upstreams: str | None, upstreams_file: Path | None, root: Path = ROOT_DIR) -> tuple[str, Any]:
    """The upstream list as parsed JSON/YAML, with a label naming where it came from.

    ``UPSTREAMS`` is inline JSON; ``UPSTREAMS_FILE`` is a path, relative ones tried from the working
    directory, then from ``root`` (the app directory); ``.yaml``/``.yml`` files are YAML, others JSON.
    The proxy and the publishing checks both read it here.
    """
    if upstreams and upstreams_file:
        raise SettingsError("set UPSTREAMS (inline JSON) or UPSTREAMS_FILE (a path), not both")
    if upstreams:
        try:
            return "UPSTREAMS", json.loads(upstreams)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"UPSTREAMS: not valid JSON: {exc}") from None
    if upstreams_file:
        path = upstreams_file
        if not path.is_absolute() and not path.exists():
            path = root / path
        label = f"UPSTREAMS_FILE ({path})"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError(f"{label}: cannot read it: {exc.strerror}") from None
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                return label, yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise SettingsError(f"{label}: not valid YAML: {exc}") from None
        try:
            return label, json.loads(text)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"{label}: not valid JSON (name the file .yaml for YAML): {exc}") from None
    raise SettingsError(
        "the proxy needs its upstream list: set UPSTREAMS (inline JSON) or UPSTREAMS_FILE (a JSON or YAML file)"
    )


def parse_proxy_config(raw: Any, environ: Mapping[str, str]) -> ProxyConfig:
    entries: Any
    if isinstance(raw, list):
        entries, aliases_raw = raw, None
    elif isinstance(raw, dict):
        unknown = sorted(set(raw) - {"upstreams", "aliases"})
        if unknown:
            raise SettingsError(f"unknown top-level field(s) {unknown}; allowed: 'upstreams', 'aliases'")
        entries, aliases_raw = raw.get("upstreams"), raw.get("aliases")
        if not isinstance(entries, list):
            raise SettingsError("field 'upstreams': must be a list of upstreams")
    else:
        raise SettingsError("must be a list of upstreams, or an object with 'upstreams' and 'aliases'")
    if not entries:
        raise SettingsError("the upstream list is empty")

    tiers = tuple(_parse_tier(index, entry) for index, entry in enumerate(entries))
    by_name: dict[str, Tier] = {}
    for tier in tiers:
        names = {tier.name} | {member.name for member in tier.members}
        for name in sorted(names):
            if name in by_name and by_name[name] is not tier:
                raise SettingsError(f"the name '{name}' is used twice; names of upstreams and groups must be unique")
            by_name[name] = tier
        for member in tier.members:
            if len(tier.members) > 1 or member.name != tier.name:
                by_name[member.name] = Tier(member.name, (member,))

    aliases = {CATCH_ALL: tiers} if aliases_raw is None else _parse_aliases(aliases_raw, by_name)
    for alias, chain in aliases.items():
        if not any(member.enabled for tier in chain for member in tier.members):
            raise SettingsError(f"aliases['{alias}']: every upstream it names is disabled")
    return ProxyConfig(tiers, aliases, aliases_raw is not None, _resolve_keys(tiers, environ))


def _entry_label(where: str, entry: Any) -> str:
    name = entry.get("name") if isinstance(entry, dict) else None
    return f"{where} (name '{name}')" if isinstance(name, str) else where


def _parse_tier(index: int, entry: Any) -> Tier:
    where = f"upstreams[{index}]"
    if not isinstance(entry, dict):
        raise SettingsError(f"{where}: must be an object with at least 'name' and 'base_url'")
    label = _entry_label(where, entry)
    if "replicas" not in entry:
        upstream = _parse_upstream(label, entry)
        return Tier(upstream.name, (upstream,))
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise SettingsError(f"{label}: field 'name': a group of replicas needs a name (letters, digits, '.', '_', '-')")
    replicas = entry["replicas"]
    if not isinstance(replicas, list) or not replicas:
        raise SettingsError(f"{label}: field 'replicas': must be a non-empty list of upstreams")
    defaults = {key: value for key, value in entry.items() if key not in _GROUP_ONLY}
    members = []
    for position, replica in enumerate(replicas):
        replica_where = f"{label} replicas[{position}]"
        if not isinstance(replica, dict):
            raise SettingsError(f"{replica_where}: must be an object with at least 'name' and 'base_url'")
        members.append(_parse_upstream(_entry_label(replica_where, replica), {**defaults, **replica}))
    return Tier(name, tuple(members))


def _parse_upstream(label: str, entry: dict[str, Any]) -> UpstreamConfig:
    try:
        return UpstreamConfig.model_validate(entry)
    except ValidationError as exc:
        raise SettingsError(f"{label}: {_describe_error(exc)}") from None


def _describe_error(exc: ValidationError) -> str:
    problems = []
    for item in exc.errors():
        loc = [str(part) for part in item["loc"]]
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            hint = "; allowed: " + ", ".join(sorted(UpstreamConfig.model_fields))
            if loc and "key" in loc[0] and loc[0] != "api_key_env":
                hint = "; never write a key here: put it in a secret and name that in 'api_key_env'"
            problems.append(f"field '{'.'.join(loc)}': unknown field{hint}")
        elif item["type"] == "missing":
            problems.append(f"field '{'.'.join(loc)}': missing (required)")
        elif loc:
            problems.append(f"field '{'.'.join(loc)}': {message}")
        elif ": " in message:  # model-level checks name their field first
            field_name, _, rest = message.partition(": ")
            problems.append(f"field '{field_name}': {rest}")
        else:
            problems.append(message)
    return "; ".join(problems)


def _parse_aliases(raw: Any, by_name: dict[str, Tier]) -> dict[str, tuple[Tier, ...]]:
    if not isinstance(raw, dict) or not raw:
        raise SettingsError("field 'aliases': must map client model names to lists of upstream or group names")
    aliases: dict[str, tuple[Tier, ...]] = {}
    for alias, chain in raw.items():
        if not isinstance(chain, list) or not chain or not all(isinstance(item, str) for item in chain):
            raise SettingsError(f"aliases['{alias}']: must be a non-empty list of upstream or group names")
        unknown = [item for item in chain if item not in by_name]
        if unknown:
            raise SettingsError(
                f"aliases['{alias}']: unknown upstream or group name(s) {unknown}; known: {sorted(by_name)}"
            )
        if len(set(chain)) != len(chain):
            raise SettingsError(f"aliases['{alias}']: names the same upstream twice")
        aliases[str(alias)] = tuple(by_name[item] for item in chain)
    return aliases


def _resolve_keys(tiers: tuple[Tier, ...], environ: Mapping[str, str]) -> dict[str, str]:
    keys: dict[str, str] = {}
    for index, tier in enumerate(tiers):
        for member in tier.members:
            if not member.enabled or member.api_key_env is None:
                continue
            value = environ.get(member.api_key_env, "").strip()
            if not value:
                raise SettingsError(
                    f"upstreams[{index}] (name '{member.name}'): field 'api_key_env': the environment variable "
                    f'{member.api_key_env} is not set; set it (a Space secret) or set "enabled": false'
                )
            keys[member.name] = value
    return keys
