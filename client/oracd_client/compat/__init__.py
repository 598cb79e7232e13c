"""ORAC's ``LlamaCppClient`` on top of oracd: drop-in shims for code written against ORAC's own client.

Inside the ORAC app, ``orac/llama_cpp_client.py`` becomes::

    from oracd_client.compat import (DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TIMEOUT, MODELS_PATH,  # noqa: F401
                                     LlamaCppClient, ManagedServer, logger)
    from orac.models import PromptResponse  # noqa: F401

Modules, one job each:

* ``legacy``   -- the old ``orac.llama_cpp_client.LlamaCppClient`` (these names are its)
* ``managed``  -- ``ManagedServer``: ``start_server()``'s Popen-like handle on a server oracd runs
* ``results``  -- which ``PromptResponse`` class a generation returns (the app's own inside ORAC)
* ``errors``   -- the old exception contract (oracd's errors as the builtin types callers catch)

Today's ORAC (its ``LlamaCppClient(model_path, config_path)``, ``generate(prompt, model, ...,
json_mode, grammar_file)``, ``prewarm_kv_cache``, ``get_health_status``, ``stop_all_servers_sync``)
has its own shim, imported on its own: ``from oracd_client.compat.today import LlamaCppClient``.

* ``today``          -- today's ``LlamaCppClient`` (these names are its)
* ``today_prompts``  -- ORAC's prompt, sampling and clean-up rules; the warm prefix of its commands
* ``today_warm``     -- the warm prefix kept per model, remembered across app restarts
* ``today_response`` -- today's ``PromptResponse`` (the app's own inside ORAC)
* ``grammar_files``  -- grammar files read per request for the price of a ``stat``
"""
from ..exceptions import ConnectionLost, ModelsPathNotServed, OracdUnavailable
from ..response import PromptResponse
from ..streaming import GenerateStream
from .legacy import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TIMEOUT, MODELS_PATH, LlamaCppClient, logger
from .managed import ManagedServer
from .results import response_class

__all__ = ["LlamaCppClient", "ManagedServer", "GenerateStream", "PromptResponse", "response_class",
           "ModelsPathNotServed", "OracdUnavailable", "ConnectionLost", "MODELS_PATH", "DEFAULT_HOST", "DEFAULT_PORT",
           "DEFAULT_TIMEOUT", "logger"]
