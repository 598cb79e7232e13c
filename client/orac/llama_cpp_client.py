"""Re-export of the oracd-backed ``LlamaCppClient`` under ORAC's old module name."""
from oracd_client.compat import (DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TIMEOUT, MODELS_PATH,  # noqa: F401
                                 LlamaCppClient, ManagedServer, logger)
from orac.models import PromptResponse  # noqa: F401

__all__ = ["LlamaCppClient", "PromptResponse", "ManagedServer", "MODELS_PATH", "DEFAULT_HOST", "DEFAULT_PORT",
           "DEFAULT_TIMEOUT", "logger"]
