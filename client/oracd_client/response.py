"""The client's own ``PromptResponse`` (the shape of ORAC's ``orac.models.PromptResponse``).

Used when no other ``orac.models.PromptResponse`` is importable; inside the ORAC
app the app's own class is returned instead (see ``compat.response_class``).
(Named ``response``, not ``models``: in oracd, "models" are model files.)
"""
from __future__ import annotations

from typing import Dict, Optional

from pydantic import BaseModel


class PromptResponse(BaseModel):
    """Response from a model generation."""

    response: str
    elapsed_ms: float
    model: str
    prompt: str
    finish_reason: Optional[str] = None
    usage: Optional[Dict[str, int]] = None
