"""Re-export of ``PromptResponse`` under ORAC's old module name."""
from oracd_client.response import PromptResponse  # noqa: F401

__all__ = ["PromptResponse"]
