"""ORAC's ``command`` JSON: the one object a model must answer with when it parses a spoken command.

Why here: the daemon constrains decoding with it (a profile's ``json_schema = "command"``)
and the eval scores answers against it; both must mean the same schema.

    {"device": "lights", "action": "set", "location": "bedroom", "value": 30}

Questions and chit-chat: ``{"device": "none", "action": "none", "location": null, "value": null}``.
"""
from __future__ import annotations

from typing import Any, Dict

#: The four keys of a command, in their usual order.
COMMAND_FIELDS = ("device", "action", "location", "value")
COMMAND_ACTIONS = ("on", "off", "toggle", "set", "increase", "decrease", "open", "close",
                   "play", "pause", "stop", "activate", "lock", "unlock", "none")
COMMAND_MAX_STRING = 32
COMMAND_SCHEMA: Dict[str, Any] = {
    "type": "object",
    "properties": {
        # bounded strings: a small model stuck repeating itself ("john-john-...") still closes the
        # object well within a profile's max_tokens instead of being cut off as invalid JSON
        "device": {"type": "string", "maxLength": COMMAND_MAX_STRING},
        "action": {"type": "string", "enum": list(COMMAND_ACTIONS)},
        "location": {"type": ["string", "null"], "maxLength": COMMAND_MAX_STRING},
        "value": {"type": ["number", "string", "null"], "maxLength": COMMAND_MAX_STRING},
    },
    "required": list(COMMAND_FIELDS),
    "additionalProperties": False,
}


# Chat-template control tokens of the model families oracd serves (ChatML/Qwen/SmolLM2, Llama 3, Gemma,
# Mistral/Llama 2, Phi/Zephyr/TinyLlama).  A prompt carrying one was formatted by its sender: with
# generate's raw = "auto", oracd sends it to llama-server as it is.  One list, for the daemon and the shims.
TEMPLATE_MARKERS = ("<|im_start|>", "<|start_header_id|>", "<start_of_turn>", "[INST]", "<|user|>",
                    "<|system|>", "<|assistant|>")


def carries_template(prompt: str) -> bool:
    return any(m in prompt for m in TEMPLATE_MARKERS)

