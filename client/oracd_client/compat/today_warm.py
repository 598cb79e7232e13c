"""Which prefix today's shim keeps warm for each model, remembered across restarts of the app.

A ``WarmRecord`` is a prefix registered with oracd's ``prewarm`` (oracd then keeps
it in every slot, and restores it after every load and oracd restart) plus what it
was built from: the JSON mode and system prompt of the generation, the grammar
file, and the grammar hint inside the prefix.  When the grammar file is rewritten
(ORAC regenerates it when device mappings change), ``with_grammar`` swaps the old
hint for the new one, which is exactly how ORAC's next prompt will differ.

``WarmState`` holds the records and, given a path, keeps them in a small JSON file
(written atomically), so that after the app restarts ``prewarm_kv_cache`` warms the
prefix its commands really had, not a guess (ORAC's topic instruction is the app's
business; the shim only learns it from the prompts it sends).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Iterator, Optional, Tuple

from .today_prompts import grammar_hint

log = logging.getLogger("oracd_client.compat.today")

STATE_ENV = "ORACD_PREWARM_STATE"
STATE_FILE = ".oracd-prewarm.json"


@dataclass(frozen=True)
class WarmRecord:
    prefix: str
    json_mode: bool = False
    system_prompt: Optional[str] = None
    grammar_file: Optional[str] = None
    hint: Optional[str] = None

    def with_grammar(self, grammar_file: Optional[str], grammar_text: Optional[str]) -> "WarmRecord":
        """This record for the grammar file's current text: the old hint in the prefix replaced by the new."""
        if grammar_text is None or not self.hint or self.hint not in self.prefix:
            return replace(self, grammar_file=grammar_file or self.grammar_file)
        new = grammar_hint(grammar_text)
        head, _, tail = self.prefix.rpartition(self.hint)
        return replace(self, prefix=head + new + tail, hint=new, grammar_file=grammar_file or self.grammar_file)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> Optional["WarmRecord"]:
        try:
            if not isinstance(d.get("prefix"), str) or not d["prefix"].strip():
                return None
            return cls(prefix=d["prefix"], json_mode=bool(d.get("json_mode")), system_prompt=d.get("system_prompt"),
                       grammar_file=d.get("grammar_file"), hint=d.get("hint"))
        except (AttributeError, TypeError):
            return None


def default_state_path(config_path: Optional[str]) -> Optional[str]:
    """``$ORACD_PREWARM_STATE`` ("" turns it off), else ``.oracd-prewarm.json`` beside the model config file
    (ORAC's data dir) when that directory exists, else None (kept in memory only)."""
    env = os.environ.get(STATE_ENV)
    if env is not None:
        return env or None
    d = os.path.dirname(os.path.abspath(config_path)) if config_path else None
    return os.path.join(d, STATE_FILE) if d and os.path.isdir(d) else None


class WarmState:
    """model -> WarmRecord, loaded lazily from ``path`` and saved on every change (when ``path`` is set)."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self._records: Optional[Dict[str, WarmRecord]] = None

    def _all(self) -> Dict[str, WarmRecord]:
        if self._records is None:
            self._records = {}
            if self.path:
                try:
                    with open(self.path, encoding="utf-8") as fh:
                        data = json.load(fh)
                    for model, d in (data.get("models") or {}).items():
                        rec = WarmRecord.from_dict(d) if isinstance(d, dict) else None
                        if rec is not None:
                            self._records[model] = rec
                except (OSError, ValueError, AttributeError):
                    pass
        return self._records

    def get(self, model: str) -> Optional[WarmRecord]:
        return self._all().get(model)

    def items(self) -> Iterator[Tuple[str, WarmRecord]]:
        return iter(list(self._all().items()))

    def set(self, model: str, rec: Optional[WarmRecord]) -> None:
        """Remember ``rec`` for ``model`` (None: forget it)."""
        records = self._all()
        if records.get(model) == rec:
            return
        if rec is None:
            records.pop(model, None)
        else:
            records[model] = rec
        self._save(records)

    def _save(self, records: Dict[str, WarmRecord]) -> None:
        if not self.path:
            return
        data = {"version": 1, "models": {m: asdict(r) for m, r in records.items()}}
        try:
            d = os.path.dirname(os.path.abspath(self.path))
            fd, tmp = tempfile.mkstemp(prefix=".oracd-prewarm-", dir=d)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(data, fh)
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:     # a read-only data dir only loses the memory across restarts
            log.debug("could not save warm prefixes to %s: %s", self.path, exc)


__all__ = ["WarmRecord", "WarmState", "default_state_path", "STATE_ENV", "STATE_FILE"]
