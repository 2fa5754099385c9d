"""Who may call the service: loopback only, unless an API key (from the environment) is set."""

from __future__ import annotations

import hmac
import ipaddress
import os

from driftloop.errors import ConfigError

API_KEY_ENV = "DRIFTLOOP_API_KEY"
API_KEY_HEADER = "X-API-Key"


def api_key() -> str | None:
    """The API key every request must carry (None: no key, loopback only)."""
    return os.environ.get(API_KEY_ENV) or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str) -> None:
    """Refuse to listen beyond this machine without an API key."""
    if not is_loopback(host) and api_key() is None:
        raise ConfigError(
            f"serve.host {host!r} is reachable from other machines: set {API_KEY_ENV} "
            "(every request must then carry it in the X-API-Key header) or bind 127.0.0.1"
        )


def key_matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
