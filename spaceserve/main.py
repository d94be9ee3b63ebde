"""Entry point: read settings, pick the app for the template, serve it with uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn
from fastapi import FastAPI

from .base.app import configure_logging
from .settings import ModelSettings, ProxySettings, SettingsError, load_settings, serves_proxy

log = logging.getLogger("spaceserve")


def build_app() -> tuple[FastAPI, str, int]:
    proxy_settings = load_settings(ProxySettings)
    upstreams = {"UPSTREAMS": proxy_settings.upstreams, "UPSTREAMS_FILE": proxy_settings.upstreams_file}
    # Each mode's app is imported only when chosen: a proxy process never loads the model server.
    if serves_proxy(proxy_settings.space_template, upstreams):
        from .proxy.app import create_proxy_app

        configure_logging(proxy_settings)
        return create_proxy_app(proxy_settings), proxy_settings.host, proxy_settings.port
    from .model.app import create_app

    settings = load_settings(ModelSettings)
    configure_logging(settings)
    return create_app(settings), settings.host, settings.port


def main() -> None:
    try:
        app, host, port = build_app()
    except SettingsError as exc:
        print(f"spaceserve: {exc}", file=sys.stderr)  # noqa: T201 - logging may not be configured yet
        sys.exit(2)
    log.info("listening on http://%s:%d", host, port)
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=10)
