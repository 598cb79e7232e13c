"""The log file with a real oracd: JSON lines, size rotation to exactly log_backups files, request lines."""
from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List

from helpers import Conn, Oracd

LEVELS = {"debug", "info", "warning", "error", "critical", "exception"}


def rpc(conn: Conn, method: str, rid: Any, **params: Any) -> Dict[str, Any]:
    msg: Dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": rid}
    if params:
        msg["params"] = params
    conn.send_raw(json.dumps(msg).encode() + b"\n")
    resp = conn.recv()
    assert resp.get("id") == rid, resp
    return resp


def read_json_lines(path: Path) -> List[Dict[str, Any]]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError(f"{path.name}:{n} is not JSON: {line[:200]!r}") from None
        assert isinstance(obj, dict), f"{path.name}:{n} is not an object: {line[:200]!r}"
        for key in ("event", "level", "timestamp"):
            assert key in obj, f"{path.name}:{n} has no {key!r}: {line[:200]!r}"
        assert obj["level"] in LEVELS, obj
        ts = datetime.fromisoformat(obj["timestamp"].replace("Z", "+00:00"))
        assert ts.tzinfo is not None and ts.utcoffset() == timezone.utc.utcoffset(None), obj["timestamp"]
        out.append(obj)
    return out


def exercise(d: Oracd, tag: str, generates: int = 3, statuses: int = 5) -> Dict[str, str]:
    """Make some requests with unique ids; returns {id: method} for what was sent."""
    sent: Dict[str, str] = {}
    with d.conn(timeout=120) as c:
        for i in range(statuses):
            rid = f"{tag}-status-{i}"
            assert rpc(c, "status", rid)["result"]["child"]["state"] == "ready"
            sent[rid] = "status"
        for i in range(generates):
            rid = f"{tag}-generate-{i}"
            resp = rpc(c, "generate", rid, prompt=f"Count to {i + 3}.", max_tokens=4, timeout=90)
            assert "result" in resp, resp
            sent[rid] = "generate"
    return sent


def test_log_rotates_to_exactly_two_backups(fresh_oracd):
    d = fresh_oracd(server={"log_max_bytes": 2048, "log_backups": 2}).start()
    tag = uuid.uuid4().hex[:8]
    exercise(d, tag, generates=4, statuses=6)
    assert d.stop() == 0, d.stderr_tail()

    names = sorted(p.name for p in d.log_dir.iterdir())
    assert names == ["orac.log", "orac.log.1", "orac.log.2"], names
    by_file = {name: read_json_lines(d.log_dir / name) for name in names}
    for name, records in by_file.items():
        assert records, f"{name} is empty"
        size = (d.log_dir / name).stat().st_size
        if name != "orac.log":
            # a rotated file stays under log_max_bytes unless one record alone is bigger
            assert size <= 2048 or len(records) == 1, (name, size, len(records))
    # rotation really dropped the oldest content: the first startup event is in stderr but no longer in a file
    assert "event='child state' state='starting'" in d.stderr_path.read_text(errors="replace")
    everything = [r for name in ("orac.log.2", "orac.log.1", "orac.log") for r in by_file[name]]
    assert not any(r["event"] == "child state" and r.get("state") == "starting" for r in everything)
    # the newest file ends with the clean shutdown, the oldest backup is older than the current file
    assert by_file["orac.log"][-1]["event"] == "oracd stopped"
    assert by_file["orac.log"][-1].get("exit_code") == 0
    oldest = min(r["timestamp"] for r in by_file["orac.log.2"])
    assert oldest <= min(r["timestamp"] for r in by_file["orac.log"])


def test_log_contents_llama_output_and_one_line_per_request(fresh_oracd):
    d = fresh_oracd(server={"log_max_bytes": 50 * 1024 * 1024}).start()
    tag = uuid.uuid4().hex[:8]
    sent = exercise(d, tag, generates=2, statuses=3)
    with d.conn(timeout=60) as c:
        bad_id = f"{tag}-nosuch"
        assert rpc(c, "no_such_method", bad_id)["error"]["code"] == -32601
        invalid_id = f"{tag}-badparams"
        assert rpc(c, "generate", invalid_id, prompt=5)["error"]["code"] == -32602
    assert d.stop() == 0, d.stderr_tail()

    assert sorted(p.name for p in d.log_dir.iterdir()) == ["orac.log"]
    records = read_json_lines(d.log_file)

    llama = [r for r in records if r.get("source") == "llama-server"]
    assert llama, "no llama-server output in the log"
    assert all(isinstance(r["event"], str) and r["event"] for r in llama)
    assert all(isinstance(r.get("pid"), int) for r in llama), llama[:3]

    requests = [r for r in records if r["event"] == "request" and str(r.get("id", "")).startswith(tag)]
    for r in requests:
        for key in ("method", "id", "peer_pid", "peer_uid", "ms", "outcome"):
            assert key in r, (key, r)
        assert r["peer_pid"] == os.getpid(), r
        assert r["peer_uid"] == os.getuid(), r
        assert isinstance(r["ms"], (int, float)) and r["ms"] >= 0, r
    ids = [r["id"] for r in requests]
    assert sorted(ids) == sorted([*sent, bad_id, invalid_id]), "expected exactly one request line per request"
    by_id = {r["id"]: r for r in requests}
    for rid, method in sent.items():
        assert by_id[rid]["method"] == method
        assert by_id[rid]["outcome"] == "ok", by_id[rid]
    assert by_id[bad_id]["method"] == "no_such_method"
    assert by_id[bad_id]["outcome"] == "error" and by_id[bad_id].get("code") == -32601
    assert by_id[invalid_id]["outcome"] == "error" and by_id[invalid_id].get("code") == -32602
    # startup and shutdown are in the log too
    events = [r["event"] for r in records]
    assert "oracd ready" in events and events[-1] == "oracd stopped"
