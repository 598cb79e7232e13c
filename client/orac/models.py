"""Re-export of ``PromptResponse`` under ORAC's old module name."""
from oracd_client.models import PromptResponse  # noqa: F401

__all__ = ["PromptResponse"]
