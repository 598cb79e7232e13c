"""oracd_protocol.errors: one table, and errors that survive the wire (to_wire -> JSON -> from_wire)."""
from __future__ import annotations

import json

import pytest

from oracd_protocol import errors as E
from oracd_protocol.errors import ERRORS, OracError, error_from_code, from_wire, to_wire


def through_the_wire(exc: OracError) -> OracError:
    return from_wire(json.loads(json.dumps(to_wire(exc))))


def test_every_class_in_the_module_is_in_the_table_once():
    classes = {v for v in vars(E).values() if isinstance(v, type) and issubclass(v, OracError) and v is not OracError}
    assert classes == set(ERRORS.values())
    assert len({c.code for c in classes}) == len(classes)
    assert all(ERRORS[c.code] is c for c in classes)


def test_load_and_unload_timeouts_have_their_own_codes():
    assert E.LoadTimeout.code == -32014 and E.LoadTimeout().message == "Model load timed out"
    assert E.UnloadTimeout.code == -32015 and E.UnloadTimeout().message == "Model unload timed out"
    assert not issubclass(E.LoadTimeout, E.GenerationTimeout)


@pytest.mark.parametrize("cls", sorted(ERRORS.values(), key=lambda c: c.code), ids=lambda c: c.__name__)
def test_round_trip_keeps_class_code_message_and_data(cls):
    data = {"reason": "x", "stderr_tail": ["a", "b"], "n": 3}
    back = through_the_wire(cls(f"something about {cls.__name__}", data))
    assert type(back) is cls and back.code == cls.code
    assert back.message == str(back) == f"something about {cls.__name__}"
    assert back.data == data


@pytest.mark.parametrize("cls", sorted(ERRORS.values(), key=lambda c: c.code), ids=lambda c: c.__name__)
def test_round_trip_without_data_and_default_message(cls):
    wire = to_wire(cls())
    assert wire == {"code": cls.code, "message": cls.default_message}          # no "data": null on the wire
    back = from_wire(wire)
    assert type(back) is cls and back.message == cls.default_message and back.data is None


def test_unknown_code_becomes_a_plain_oracerror_keeping_the_code():
    back = from_wire({"code": -32099, "message": "new in a later oracd", "data": [1]})
    assert type(back) is OracError and back.code == -32099 and back.message == "new in a later oracd"
    assert back.data == [1]


def test_spec_message_gets_the_string_detail_appended():
    back = from_wire({"code": -32602, "message": "Invalid params", "data": "top_k: expected integer"})
    assert isinstance(back, E.InvalidParams) and back.message == "Invalid params: top_k: expected integer"
    assert back.data == "top_k: expected integer"
    # only a bare default message: a specific one is kept as it is, and non-string data is never merged
    assert from_wire({"code": -32602, "message": "prompt is blank", "data": "x"}).message == "prompt is blank"
    assert from_wire({"code": -32602, "message": "Invalid params", "data": {"k": 1}}).message == "Invalid params"


@pytest.mark.parametrize("err", [None, "boom", 42, ["code", -32001]])
def test_a_malformed_error_object_is_an_internal_error_saying_so(err):
    back = from_wire(err)
    assert type(back) is E.InternalError and back.code == -32603
    assert back.message == f"malformed error from oracd: {err!r}"


def test_missing_or_odd_fields_fall_back_sanely():
    back = from_wire({"code": "-32001", "message": None})
    assert type(back) is E.InternalError and back.message == "Internal error"
    back = from_wire({"code": -32001})
    assert type(back) is E.ModelNotFound and back.message == "Model not found"


def test_error_from_code_and_to_dict_are_the_same_table():
    err = error_from_code(-32005, "too many connections")
    assert type(err) is E.Busy and err.to_dict() == to_wire(err) == {"code": -32005, "message": "too many connections"}


def test_transport_errors_are_the_builtin_kinds_callers_catch():
    assert issubclass(E.OracdUnavailable, ConnectionError) and issubclass(E.ConnectionLost, ConnectionError)
    assert issubclass(E.CallTimeout, TimeoutError)
    u = E.OracdUnavailable("no", "/x.sock", 2)
    assert (u.socket_path, u.errno, str(u)) == ("/x.sock", 2, "no")


def test_the_daemon_has_no_second_error_table():
    """The daemon imports the protocol's table directly: no oracd.errors copy or re-export remains."""
    import importlib.util
    assert importlib.util.find_spec("oracd.errors") is None
