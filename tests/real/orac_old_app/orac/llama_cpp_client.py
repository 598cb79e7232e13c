"""LlamaCppClient now talks to oracd (pip install oracd); see its README."""
from oracd_client.compat import (DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TIMEOUT, MODELS_PATH,  # noqa: F401
                                 LlamaCppClient, ManagedServer, logger)
from orac.models import PromptResponse  # noqa: F401
