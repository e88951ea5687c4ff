"""Where a command's settings, store and admin API come from: flags, then `PEEL_*`, then defaults."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from gateway.cli.client import DEFAULT_ADMIN_URL, AdminClient
from gateway.core.settings import Settings, load_settings

if TYPE_CHECKING:
    from routes.store import Store


def config_path(args: argparse.Namespace) -> str | None:
    """--config, else PEEL_CONFIG; None means the built-in defaults."""
    return args.config or os.environ.get("PEEL_CONFIG") or None


def settings(args: argparse.Namespace) -> Settings:
    return load_settings(config_path(args))


def admin_url(args: argparse.Namespace) -> str:
    """--admin, else PEEL_ADMIN_URL, else the admin listener of the settings file, else the default."""
    if args.admin:
        return str(args.admin)
    if os.environ.get("PEEL_ADMIN_URL"):
        return os.environ["PEEL_ADMIN_URL"]
    if config_path(args):
        listener = settings(args).listeners.admin
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(listener.host, listener.host)
        scheme = "https" if listener.tls else "http"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{listener.port}"
    return DEFAULT_ADMIN_URL


def admin_client(args: argparse.Namespace) -> AdminClient:
    return AdminClient(admin_url(args), args.token or os.environ.get("PEEL_ADMIN_TOKEN"),
                       cacert=args.cacert or os.environ.get("PEEL_ADMIN_CA") or None)


def open_store(args: argparse.Namespace, *, check: bool = True) -> Store:
    """The store of the settings; `check` refuses a schema that is behind or ahead of this code."""
    # Imported here: SQLAlchemy and alembic are only needed by the local commands.
    from routes.store import Store

    store = Store(settings(args).database.url)
    if check:
        store.check_schema()
    return store
