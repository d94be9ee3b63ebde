"""Entry point: read settings, pick the app for the template, serve it with uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn
from fastapi import FastAPI

from .proxy.app import create_proxy_app
from .server import configure_logging, create_app
from .settings import ModelSettings, ProxySettings, SettingsError, load_settings

log = logging.getLogger("spaceserve")


def build_app() -> tuple[FastAPI, str, int]:
    proxy_settings = load_settings(ProxySettings)
    # The same rule as the image's (spaceserve.templates): a template with upstreams is a proxy.
    if proxy_settings.space_template == "proxy" or proxy_settings.upstreams or proxy_settings.upstreams_file:
        configure_logging(proxy_settings)
        return create_proxy_app(proxy_settings), proxy_settings.host, proxy_settings.port
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
