"""Talk HTTP straight to the llama-server that oracd supervises (for checks oracd cannot show)."""
from __future__ import annotations

import http.client
import json
from typing import Any


from oracd.provision.smoke import UnixHTTPConnection as _UnixHTTPConnection


def _connect(endpoint: str, timeout: float) -> http.client.HTTPConnection:
    """A connection to the child's endpoint as reported by status ("unix:/path" or "host:port")."""
    if endpoint.startswith("unix:"):
        return _UnixHTTPConnection(endpoint[5:], timeout)
    host, port = endpoint.rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


def llama_get(endpoint: str, path: str, timeout: float = 10) -> Any:
    """GET from the child's endpoint; (status, JSON answer)."""
    conn = _connect(endpoint, timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def llama_post(endpoint: str, path: str, body: Any, timeout: float = 120) -> Any:
    """POST JSON to the child's endpoint; its JSON answer (AssertionError on a status other than 200)."""
    conn = _connect(endpoint, timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = json.loads(resp.read() or b"null")
        assert resp.status == 200, data
        return data
    finally:
        conn.close()


def busy_slots(endpoint: str) -> int:
    status, slots = llama_get(endpoint, "/slots")
    assert status == 200, slots
    return sum(1 for s in slots if s.get("is_processing"))


def wait_slots_idle(endpoint: str, timeout: float = 10, every: float = 0.05) -> float:
    """Seconds until no llama-server slot is processing; AssertionError after ``timeout``."""
    import time
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if busy_slots(endpoint) == 0:
            return time.monotonic() - t0
        time.sleep(every)
    raise AssertionError(f"llama-server slot still busy after {timeout}s")
