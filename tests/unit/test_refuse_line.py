"""At shutdown past shutdown_grace, a request that is still running gets -32009, never a silent close."""
import json

from oracd.api.jsonrpc import Dispatcher
from oracd_protocol.errors import ShuttingDown


def _refuse(line: bytes):
    out = Dispatcher({}).refuse_line(line, ShuttingDown("stopping"))
    return None if out is None else json.loads(out)


def test_each_request_with_an_id_gets_the_error_under_its_own_id():
    one = _refuse(b'{"jsonrpc":"2.0","id":7,"method":"generate","params":{"prompt":"x"}}')
    assert one == {"jsonrpc": "2.0", "error": {"code": -32009, "message": "stopping"}, "id": 7}
    batch = _refuse(b'[{"jsonrpc":"2.0","id":"a","method":"status"},{"jsonrpc":"2.0","method":"status"},'
                    b'{"jsonrpc":"2.0","id":2,"method":"generate"}]')
    assert [r["id"] for r in batch] == ["a", 2] and all(r["error"]["code"] == -32009 for r in batch)


def test_notifications_and_junk_get_nothing():
    assert _refuse(b'{"jsonrpc":"2.0","method":"status"}') is None
    assert _refuse(b'not json') is None
    assert _refuse(b'{"id":1}') is None
