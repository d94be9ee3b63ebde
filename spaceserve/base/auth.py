"""API keys: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass

from fastapi import Request

from ..settings import CommonSettings
from .errors import AuthenticationFailed, Misconfigured
from .requestlog import get_record

log = logging.getLogger("spaceserve.base.auth")


def fingerprint(key: str) -> str:
    """A short, stable, non-reversible name for a key, fit for logs and metrics labels."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class KeyRing:
    keys: tuple[bytes, ...]
    # Why completions are refused although the server runs (no key on a public host).
    refusal: str | None = None

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> KeyRing:
        keys = tuple(key.encode() for key in settings.load_api_keys())
        refusal = None
        if not keys and not settings.allow_unauthenticated and (settings.on_space or not settings.loopback_only):
            where = "on a Space" if settings.on_space else f"on {settings.host}, which is not loopback"
            refusal = (
                f"no API key is configured and this server is reachable {where}; "
                "set the API_KEYS secret (or API_KEYS_FILE), or set ALLOW_UNAUTHENTICATED=true "
                "to serve without keys"
            )
        return cls(keys=keys, refusal=refusal)

    def describe(self) -> str:
        if self.refusal:
            return "refusing completions: " + self.refusal
        if self.keys:
            return f"{len(self.keys)} API key(s) configured"
        return "no API key configured: serving without authentication"

    def check(self, presented: list[str]) -> str | None:
        """Return the caller's key fingerprint (None when keys are off); raise when refused.

        ``presented`` holds every key the request carries: on a private Space the Hub token takes
        the ``Authorization`` header, so the API key then comes in ``X-API-Key``.
        """
        if self.refusal:
            raise Misconfigured(self.refusal, code="auth_not_configured")
        if not self.keys:
            return None
        if not presented:
            raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
        for candidate in presented:
            # Compare against every key so the time taken does not say which one nearly matched.
            matched = False
            for key in self.keys:
                matched |= hmac.compare_digest(candidate.encode(), key)
            if matched:
                return fingerprint(candidate)
        raise AuthenticationFailed("invalid API key")


def presented_keys(request: Request) -> list[str]:
    """The keys a request carries: ``X-API-Key`` first, then a Bearer token."""
    keys = []
    key = request.headers.get("x-api-key", "").strip()
    if key:
        keys.append(key)
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        keys.append(value.strip())
    return keys


def require_key(request: Request) -> None:
    """Check the request's key against the app's keyring and note its fingerprint on the request's
    record (for the access log and metrics); raise when refused. The one key check of every route."""
    keyring: KeyRing = request.app.state.keyring
    get_record(request.scope).key = keyring.check(presented_keys(request))
