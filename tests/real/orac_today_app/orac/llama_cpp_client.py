"""LlamaCppClient now talks to oracd (pip install oracd); see its README, "Today's ORAC"."""
from oracd_client.compat.today import (DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TIMEOUT,  # noqa: F401
                                       JSON_SYSTEM_PROMPT, MODELS_PATH, LlamaCppClient, ServerState, logger)
from orac.models import PromptResponse  # noqa: F401
