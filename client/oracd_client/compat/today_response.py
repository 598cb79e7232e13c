"""Today's ORAC ``PromptResponse`` (``text``, ``response_time``...), and which class a generation returns.

Inside the ORAC app, ``orac.models.PromptResponse`` is the app's own class and is
returned (looked up at call time, as ``results`` does for the old shim).  A
``PromptResponse`` of the old shape (``response``/``elapsed_ms``, e.g. the one this
package installs as ``orac.models``) does not fit, so the client's copy of today's
shape below is used then.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from pydantic import BaseModel, Field

from .results import build_with, response_class


class TodayPromptResponse(BaseModel):
    """Response from text generation (the fields of today's ORAC ``orac.models.PromptResponse``)."""

    text: str = Field(..., description="Generated text")
    response_time: float = Field(..., description="Generation time in seconds")
    model: str = Field(..., description="Model used for generation")
    prompt: str = Field(..., description="Original prompt")
    temperature: float = Field(..., description="Sampling temperature used")
    top_p: float = Field(..., description="Top-p sampling parameter used")
    top_k: int = Field(..., description="Top-k sampling parameter used")
    max_tokens: int = Field(..., description="Maximum tokens generated")
    json_mode: bool = Field(False, description="Whether JSON mode was enabled")
    system_prompt: Optional[str] = Field(None, description="System prompt used")
    generated_at: float = Field(..., description="Timestamp when generation started")
    finish_reason: Optional[str] = Field(None, description="Reason for generation completion")
    usage: Optional[Dict[str, int]] = Field(None, description="Token usage statistics")


def today_response_class() -> type:
    """The running program's ``orac.models.PromptResponse`` if it has today's shape, else ``TodayPromptResponse``."""
    cls = response_class()
    fields = getattr(cls, "model_fields", None) or {}
    return cls if "text" in fields and "response_time" in fields else TodayPromptResponse


def build_today_response(**fields: Any) -> Any:
    """A ``today_response_class()`` instance; an app class that refuses a field gets ``TodayPromptResponse``."""
    cls = today_response_class()
    return build_with(cls, TodayPromptResponse, fields, getattr(cls, "model_fields", {}))


__all__ = ["TodayPromptResponse", "today_response_class", "build_today_response"]
