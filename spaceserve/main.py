"""Entry point: read settings, pick the app for the template, serve it with uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn
from fastapi import FastAPI

from .base.app import configure_logging
from .base.protocol import guarded_protocol
from .settings import CommonSettings, ModelSettings, ProxySettings, SettingsError, load_settings, serves_proxy

log = logging.getLogger("spaceserve")


def build_app() -> tuple[FastAPI, CommonSettings]:
    proxy_settings = load_settings(ProxySettings)
    upstreams = {"UPSTREAMS": proxy_settings.upstreams, "UPSTREAMS_FILE": proxy_settings.upstreams_file}
    # Each mode's app is imported only when chosen: a proxy process never loads the model server.
    if serves_proxy(proxy_settings.space_template, upstreams):
        from .proxy.app import create_proxy_app

        configure_logging(proxy_settings)
        return create_proxy_app(proxy_settings), proxy_settings
    from .model.app import create_app

    settings = load_settings(ModelSettings)
    configure_logging(settings)
    return create_app(settings), settings


def main() -> None:
    try:
        app, settings = build_app()
    except SettingsError as exc:
        print(f"spaceserve: {exc}", file=sys.stderr)  # noqa: T201 - logging may not be configured yet
        sys.exit(2)
    raise_open_files_limit()
    log.info("listening on http://%s:%d", settings.host, settings.port)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        # Connection limits (docs/security.md); the protocol adds the head size, count and time.
        http=guarded_protocol(settings),
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_timeout,
    )


def raise_open_files_limit() -> None:
    """Soft limit on open files up to the hard one: every connection holds a descriptor."""
    try:
        import resource
    except ImportError:  # not on a POSIX system
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
            return
        log.info("open-files limit raised from %d to %d", soft, target)
