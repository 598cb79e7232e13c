"""The app's data models (the fields of ORAC's orac/models.py that the client and the routes use)."""
from typing import Any, Dict, List, Optional

from pydantic import BaseModel, Field


class ModelInfo(BaseModel):
    name: str
    size: int
    modified: float
    backend: str = "llama_cpp"


class ModelListResponse(BaseModel):
    models: List[ModelInfo]


class PromptResponse(BaseModel):
    """The app's own response class: the client must return this one."""
    text: str
    response_time: float
    model: str
    prompt: str
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    json_mode: bool = False
    system_prompt: Optional[str] = None
    generated_at: float
    finish_reason: Optional[str] = None
    usage: Optional[Dict[str, int]] = None

    def app_marker(self) -> str:          # app-only behaviour
        return "the ORAC app"


class ModelLoadRequest(BaseModel):
    name: str
    path: Optional[str] = None


class ModelLoadResponse(BaseModel):
    status: str
    message: Optional[str] = None
    error: Optional[str] = None
    elapsed_seconds: Optional[float] = None


class ModelUnloadResponse(BaseModel):
    status: str
    message: Optional[str] = None
    error: Optional[str] = None


class GenerationRequest(BaseModel):
    model: Optional[str] = None
    prompt: str
    system_prompt: Optional[str] = None
    stream: bool = False
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    stop: Optional[List[str]] = None
    max_tokens: Optional[int] = None
    json_mode: bool = Field(False)          # as ORAC's: never None, so the topic's force_json is never used
    grammar_file: Optional[str] = None
    metadata: Optional[Dict[str, Any]] = None


class GenerationResponse(BaseModel):
    status: str
    response: Optional[str] = None
    elapsed_ms: float
    error: Optional[str] = None
    model: Optional[str] = None
