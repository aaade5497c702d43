"""Suite-wide fixtures: no test reaches the internet, and no test sees a real Krea token.

Every outgoing connection is checked: loopback only. A test that tries to reach Krea's API
(or any other host) fails at once with a message, instead of hanging or, worse, spending money.
"""

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures_services import *  # noqa: F403  (PostgreSQL, S3 and Chromium for system tests)

_real_connect = socket.socket.connect
_real_getaddrinfo = socket.getaddrinfo
LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", None}


class NetworkBlockedError(RuntimeError):
    """A test tried to leave the machine."""


def _is_local(host: Any) -> bool:
    if host in LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0] if isinstance(address, tuple) else address
        if not _is_local(host):
            raise NetworkBlockedError(f"tests may not connect to {address!r}: loopback only")
    return _real_connect(self, address)


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if isinstance(host, bytes):
        host = host.decode()
    if not _is_local(host):
        raise NetworkBlockedError(f"tests may not resolve {host!r}: loopback only")
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(scope="session", autouse=True)
def _loopback_only() -> Iterator[None]:
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.getaddrinfo = _guarded_getaddrinfo
    try:
        yield
    finally:
        socket.socket.connect = _real_connect  # type: ignore[method-assign]
        socket.getaddrinfo = _real_getaddrinfo


@pytest.fixture(autouse=True)
def _no_real_krea_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests configure the backend explicitly; a developer's KREA_* variables never leak in."""
    for name in ("KREA_API_KEY", "KREA_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
