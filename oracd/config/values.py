"""Value checks shared by ``[llama]`` and per-model profiles (a leaf: neither imports the other)."""
from __future__ import annotations

import ipaddress
import math
from typing import Any, Tuple, Union

from ..workers.hello import split_address


def rpc_workers(key: str, value: Any) -> Tuple[str, ...]:
    """A list of "host:port" (IPv4 or a name; rpc-server has no IPv6), no duplicates; ValueError naming ``key``."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f'{key}: expected a list of "host:port" strings, got {value!r}')
    for v in value:
        try:
            split_address(v)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    if len(set(value)) != len(value):
        raise ValueError(f"{key}: lists a worker twice, got {value!r}")
    return tuple(value)


def tensor_split(key: str, value: Any) -> Tuple[float, ...]:
    if (not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               and math.isfinite(v) and v >= 0 for v in value)
            or (value and not any(value))):
        raise ValueError(f"{key}: expected a list of numbers >= 0, not all zero, got {value!r}")
    return tuple(float(v) for v in value)


def listen_address(text: str) -> Tuple[str, int]:
    """``server.metrics_listen`` as (host, port); loopback only."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {text!r}")
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"metrics are served on loopback only, got {host!r}")
    return host, int(port)


def auto_or_bool(key: str, value: Any) -> Union[str, bool]:
    """``"auto"``, ``true`` or ``false``: ``swa_full`` (sliding-window models get ``--swa-full``,
    ``child/swa.py``) and ``batch_invariant`` (``child/command.py``)."""
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError(f'{key}: expected "auto", true or false, got {value!r}')


HttpAddress = Union[Tuple[str, int], str]


def http_address(text: str) -> HttpAddress:
    """An ``[http] listen`` entry: ("host", port) for "host:port" / "[v6]:port", or the path of "unix:/path"."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected \"host:port\" or \"unix:/path\", got {text!r}")
    if text.startswith("unix:"):
        path = text[5:]
        if not path.startswith("/") or "\0" in path or len(path) > 104:
            raise ValueError(f"expected unix:/absolute/path (at most 104 bytes), got {text!r}")
        return path
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port or unix:/path, got {text!r}")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"expected an IP address (or localhost) as host, got {text!r}") from None
    return host, int(port)


def address_is_local(addr: HttpAddress) -> bool:
    """A Unix socket or a loopback host: only this machine can connect."""
    if isinstance(addr, str):
        return True
    host = addr[0]
    return host == "localhost" or ipaddress.ip_address(host).is_loopback
