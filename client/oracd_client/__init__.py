"""oracd's client library.

* ``OracdClient`` -- low-level async JSON-RPC to oracd (``await c.call("status")``).
* ``call_sync`` -- one blocking call, for code that cannot await.
* ``LlamaCppClient`` / ``PromptResponse`` -- ORAC's old interface on top of oracd
  (``oracd_client.compat``; also importable as ``orac.llama_cpp_client`` / ``orac.models``);
  ``LlamaCppClient.generate_stream()`` streams a generation (``GenerateStream``).
* ``oracctl`` (``oracd_client.cli``) -- the operator's command line.

Errors from the daemon are the classes of ``oracd.errors`` (shared error table).
"""
from oracd.errors import OracError, error_from_code

from .compat import LlamaCppClient, ManagedServer, response_class
from .exceptions import CallTimeout, ConnectionLost, ModelsPathNotServed, OracdUnavailable
from .models import PromptResponse
from .paths import default_socket_path
from .streaming import GenerateStream
from .sync import call_sync
from .transport import OracdClient

__all__ = ["OracdClient", "call_sync", "LlamaCppClient", "ManagedServer", "PromptResponse", "response_class",
           "OracError", "error_from_code", "OracdUnavailable", "ConnectionLost", "CallTimeout",
           "ModelsPathNotServed", "default_socket_path", "GenerateStream"]
