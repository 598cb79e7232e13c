"""The prompt rules of today's ORAC client (HEAD's ``orac/llama_cpp_client.py``), as pure functions.

``generate()`` formats the caller's prompt with the model's ``prompt_format.template``
from ``model_configs.yaml`` (default ``"{system_prompt}\\n\\n{user_prompt}"``), the
system slot holding ORAC's JSON instruction in JSON mode and the caller's (or the
model's) system prompt otherwise; sampling switches to ORAC's grammar values when a
grammar applies; the answer is cleaned up as ORAC does.  These are ORAC's rules,
reproduced so the same text reaches the model.

Warm prefixes.  ORAC's generation service wraps each command as
``"{instruction} {grammar hint}\\n\\nUser: {command}\\nAssistant: {\\"device\\":\\""``,
the hint listing the devices and locations of the grammar file.  Everything before
the command is the same for every command until the instruction or the grammar
changes, so that prefix (inside the model template) is what ``prewarm`` puts in the
KV cache: ``predicted_prefix`` builds it ahead of any command, ``stable_prefix``
reads it off a prompt actually sent.
"""
from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional, Tuple

#: ORAC's system prompt in JSON mode (the text must be ORAC's: it is part of what the model reads).
JSON_SYSTEM_PROMPT = ("You must respond with valid JSON only. Do not include any explanations, thinking, or "
                      "commentary outside the JSON structure. Your response should be clean, properly formatted "
                      "JSON that directly answers the request.")
DEFAULT_TEMPLATE = "{system_prompt}\n\n{user_prompt}"
#: The instruction ORAC puts before a grammar hint when the topic has none (and ``prewarm_kv_cache``'s default).
DEFAULT_INSTRUCTION = "/no_think Match input to JSON."
#: Stop strings outside JSON mode, and the markers removed from a free-form answer.
CHAT_MARKERS = ["<|im_end|>", "<|im_start|>", "<think>", "</think>"]
#: Where the command starts in the prompt ORAC's generation service builds in grammar mode.
COMMAND_LEAD_IN = "\n\nUser: "
#: ORAC's grammar-mode top_p/top_k (applied only where the caller kept the defaults 0.7/40).
GRAMMAR_TOP_P, GRAMMAR_TOP_K = 0.8, 30
_SENTINEL_U = "\x00oracd-user\x00"
_SENTINEL_S = "\x00oracd-system\x00"
_JSON_OBJECT = re.compile(r"\{.*\}", re.S)


def model_config(configs: Optional[Dict[str, Any]], model: str) -> Dict[str, Any]:
    """``configs["models"][model]`` or {} (as ORAC looks it up: by the name the caller passed)."""
    models = (configs or {}).get("models") or {}
    cfg = models.get(model) if isinstance(models, dict) else None
    return cfg if isinstance(cfg, dict) else {}


def template_of(cfg: Dict[str, Any]) -> str:
    fmt = cfg.get("prompt_format") or {}
    t = fmt.get("template") if isinstance(fmt, dict) else None
    return t if isinstance(t, str) and t else DEFAULT_TEMPLATE


def system_slot(cfg: Dict[str, Any], json_mode: bool, system_prompt: Optional[str]) -> str:
    """What fills the template's ``{system_prompt}``: ORAC's JSON instruction in JSON mode, else the caller's
    system prompt, else the model's ``system_prompt`` from model_configs.yaml."""
    if json_mode:
        return JSON_SYSTEM_PROMPT
    return system_prompt or cfg.get("system_prompt") or ""


def format_prompt(template: str, system: str, user: str) -> str:
    return template.format(system_prompt=system, user_prompt=user)


def template_head(template: str, system: str) -> str:
    """The formatted template up to the user's text (everything a prompt starts with)."""
    return format_prompt(template, system, _SENTINEL_U).split(_SENTINEL_U, 1)[0]


def user_lead_in(template: str) -> str:
    """The template's text between the system slot and the user slot (e.g. ChatML's
    ``"\\n<|im_end|>\\n<|im_start|>user\\n"``), or "" if the user slot does not follow the system slot."""
    full = format_prompt(template, _SENTINEL_S, _SENTINEL_U)
    s, u = full.find(_SENTINEL_S), full.find(_SENTINEL_U)
    return full[s + len(_SENTINEL_S):u] if 0 <= s < u else ""


def sampling(temperature: float, top_p: float, top_k: int, grammar: bool,
             recommended: Dict[str, Any]) -> Tuple[float, float, int]:
    """ORAC's sampling rules: with a grammar, temperature 0 and top_p/top_k 0.8/30 where the caller kept the
    defaults (0.7/40); without, the model's ``recommended_settings`` where the caller kept the defaults."""
    if grammar:
        return 0.0, (GRAMMAR_TOP_P if top_p == 0.7 else top_p), (GRAMMAR_TOP_K if top_k == 40 else top_k)
    if temperature == 0.7:
        temperature = recommended.get("temperature", 0.7)
    if top_p == 0.7:
        top_p = recommended.get("top_p", 0.7)
    if top_k == 40:
        top_k = recommended.get("top_k", 40)
    return temperature, top_p, top_k


# ---------------------------------------------------------------------------------------------- grammar hints
def _options(text: str, rule: str) -> List[str]:
    """The quoted alternatives of the first ``<rule> ::= ...`` line, UNKNOWN left out (ORAC's reading of
    a grammar: the first match of ``rule\\s*::=`` on one line, as its generation service does)."""
    m = re.search(rule + r"\s*::=\s*(.+?)(?:\n|$)", text)
    return [o for o in re.findall(r'"([^"]+)"', m.group(1)) if o != "UNKNOWN"] if m else []


def grammar_hint(grammar_text: str) -> str:
    """The hint ORAC's generation service puts after the instruction: the grammar's devices and locations."""
    devices, locations = _options(grammar_text, "device"), _options(grammar_text, "location")
    if not devices and not locations:
        return "Output JSON with device, action, location. Use UNKNOWN if unclear."
    return (f"Devices: [{', '.join(devices) if devices else 'UNKNOWN'}]. "
            f"Locations: [{', '.join(locations) if locations else 'UNKNOWN'}]. Use UNKNOWN if no match.")


def command_head(instruction: str, grammar_text: str) -> str:
    """The start of a grammar-mode command prompt of ORAC's generation service, up to the command."""
    return f"{instruction} {grammar_hint(grammar_text)}{COMMAND_LEAD_IN}"


# ---------------------------------------------------------------------------------------------- warm prefixes
def predicted_prefix(template: str, system: str, instruction: Optional[str], grammar_text: Optional[str]) -> str:
    """The prefix a command will be sent with, before any was: the template up to the user slot, then (with a
    grammar) ORAC's instruction, the grammar hint and ``"\\n\\nUser: "``."""
    head = template_head(template, system)
    if grammar_text is None:
        return head
    return head + command_head(instruction or DEFAULT_INSTRUCTION, grammar_text)


def stable_prefix(template: str, system: str, user: str) -> str:
    """The part of ``format_prompt(template, system, user)`` every later command shares: the template up to the
    user slot, then the caller's prompt up to the command (``"\\n\\nUser: "``, or the start of the user slot of a
    prompt that carries the template again, as ORAC's free-form prompts do), if it has one."""
    head = template_head(template, system)
    ends = [i + len(COMMAND_LEAD_IN) for i in [user.find(COMMAND_LEAD_IN)] if i >= 0]
    lead = user_lead_in(template)
    if len(lead.strip()) >= 4:
        i = user.find(lead)
        if i >= 0:
            ends.append(i + len(lead))
    return head + user[:min(ends)] if ends else head


# ---------------------------------------------------------------------------------------------- answers
def clean_response(text: str, json_mode: bool) -> str:
    """ORAC's clean-up of the model's text: JSON mode keeps valid JSON (or the first {...} that parses, or an
    error object carrying the raw text); free-form drops chat markers and folds whitespace."""
    text = (text or "").strip()
    if json_mode:
        try:
            json.loads(text)
        except ValueError:
            m = _JSON_OBJECT.search(text)
            if m:
                try:
                    json.loads(m.group())
                    text = m.group()
                except ValueError:
                    text = _error_object("Invalid JSON generated by model", text)
            else:
                text = _error_object("No JSON found in model response", text)
    else:
        for marker in CHAT_MARKERS:
            text = text.replace(marker, "")
        text = " ".join(text.split())
    return text or "No response generated"


def _error_object(error: str, raw: str) -> str:
    # ORAC builds this text by hand, escaping only double quotes; kept so callers see the same string
    return '{"error": "' + error + '", "raw_response": "' + raw.replace('"', '\\"') + '"}'


__all__ = ["JSON_SYSTEM_PROMPT", "DEFAULT_TEMPLATE", "DEFAULT_INSTRUCTION", "CHAT_MARKERS", "COMMAND_LEAD_IN",
           "model_config", "template_of", "system_slot", "format_prompt", "template_head", "user_lead_in",
           "sampling", "grammar_hint", "command_head", "predicted_prefix", "stable_prefix", "clean_response"]


def generate_params(formatted: str, model: str, temperature: float, top_p: float, top_k: int, max_tokens: int,
                    timeout: float, json_mode: bool, grammar_text: Optional[str]) -> Dict[str, Any]:
    """oracd's ``generate`` for one formatted ORAC prompt: raw (the template is ORAC's own), ORAC's sampling,
    its stop markers outside JSON mode, and the grammar file's text, else the JSON grammar in JSON mode."""
    params: Dict[str, Any] = {
        "prompt": formatted, "model": model, "raw": True, "temperature": float(temperature), "top_p": float(top_p),
        "top_k": int(top_k), "max_tokens": int(max_tokens), "timeout": float(timeout)}
    if not json_mode:
        params["stop"] = list(CHAT_MARKERS)
    if grammar_text is not None:
        # a text ending in ".gbnf" would be taken for a file name by oracd
        params["grammar"] = grammar_text + "\n" if grammar_text.endswith(".gbnf") else grammar_text
    elif json_mode:
        params["grammar"] = "json"
    return params
