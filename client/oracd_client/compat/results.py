"""Which ``PromptResponse`` a generation returns: the running program's ``orac.models.PromptResponse``.

Inside the ORAC app that is the app's own class (``isinstance`` checks and FastAPI
response models keep working); standalone it is the client's copy
(``oracd_client.response.PromptResponse``, also ``orac.models.PromptResponse``).
The class is looked up at call time, so importing the client never imports the app.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, Iterable

from ..response import PromptResponse


def response_class() -> type:
    """``orac.models.PromptResponse`` as the running program sees it (the app's own inside ORAC)."""
    try:
        mod = importlib.import_module("orac.models")
    except Exception:
        return PromptResponse
    cls = getattr(mod, "PromptResponse", None)
    return cls if isinstance(cls, type) else PromptResponse


def build_with(cls: type, fallback: type, fields: Dict[str, Any], known: Iterable[str]) -> Any:
    """``cls(**fields)``; an app class that refuses some of them (fewer fields, extra="forbid") gets only
    the ``known`` ones; one that refuses even those, the client's own ``fallback`` class."""
    try:
        return cls(**fields)
    except Exception:
        if cls is fallback:
            raise
        keep = set(known)
        try:
            return cls(**{k: v for k, v in fields.items() if k in keep})
        except Exception:
            return fallback(**fields)


def build_response(**fields: Any) -> Any:
    """A ``response_class()`` instance; an app class that refuses the newer fields gets the four core ones."""
    return build_with(response_class(), PromptResponse, fields, ("response", "elapsed_ms", "model", "prompt"))
