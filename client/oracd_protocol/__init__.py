"""oracd's wire protocol, shared by the daemon, the client library, oracctl, eval, bench and tests.

Why a package of its own: the daemon and every client must agree on one error
table, one line framing and one socket discovery; before this, each kept its
own copy.  It imports only the Python standard library, so a client never
needs the daemon's dependencies, and the daemon can import it on its hot path.

Modules (imported one by one; this file imports none of them, so the daemon
pays only for what it uses):

* ``errors``   -- the error table (codes, classes), ``to_wire``/``from_wire``,
  and the transport errors a client raises (no daemon, connection lost, timeout)
* ``framing``  -- ``NewlineFramer`` (one JSON text per line), ``encode``, ``decode_strict``
* ``names``    -- notification method names, socket discovery, environment names, client grace
* ``schemas``  -- ORAC's ``command`` JSON schema
* ``blocking`` -- the one blocking client (``BlockingClient``, ``call_sync``)
"""
