"""The old app's PromptResponse (and the request model its API takes)."""
from typing import Dict, Optional

from pydantic import BaseModel


class PromptResponse(BaseModel):
    response: str
    elapsed_ms: float
    model: str
    prompt: str
    finish_reason: Optional[str] = None
    usage: Optional[Dict[str, int]] = None


class GenerationRequest(BaseModel):
    model: str
    prompt: str
    system_prompt: Optional[str] = None
    stream: bool = False
    temperature: float = 0.7
    top_p: float = 0.7
    top_k: int = 40
    max_tokens: Optional[int] = None
