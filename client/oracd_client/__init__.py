"""oracd's client library.

* ``OracdClient`` -- low-level async JSON-RPC to oracd (``await c.call("status")``).
* ``call_sync`` -- one blocking call, for code that cannot await.
* ``LlamaCppClient`` / ``PromptResponse`` -- ORAC's old interface on top of oracd
  (``oracd_client.compat``; also importable as ``orac.llama_cpp_client`` / ``orac.models``);
  ``LlamaCppClient.generate_stream()`` streams a generation (``GenerateStream``).
* ``oracctl`` (``oracd_client.cli``) -- the operator's command line.

The wire itself (error table, framing, socket discovery, the blocking client) is
``oracd_protocol``, shared with the daemon; errors from the daemon are its classes.
"""
from oracd_protocol.blocking import call_sync
from oracd_protocol.errors import OracError, error_from_code
from oracd_protocol.names import default_socket_path

from .compat import LlamaCppClient, ManagedServer, response_class
from .exceptions import CallTimeout, ConnectionLost, ModelsPathNotServed, OracdUnavailable
from .response import PromptResponse
from .streaming import GenerateStream
from .transport import OracdClient

__all__ = ["OracdClient", "call_sync", "LlamaCppClient", "ManagedServer", "PromptResponse", "response_class",
           "OracError", "error_from_code", "OracdUnavailable", "ConnectionLost", "CallTimeout",
           "ModelsPathNotServed", "default_socket_path", "GenerateStream"]
