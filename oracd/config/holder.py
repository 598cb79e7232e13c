"""The one config holder every component reads from; a reload swaps it once, atomically.

Why: a component that keeps its own copy of the config misses the next reload
(a profile's ``rpc_workers = []`` would leave the worker pre-flight requiring the
removed worker).  So nothing keeps a copy: each component reads ``holder.cfg``
when it needs a value.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

from .profiles import Profile
from .settings import Config


class ConfigHolder:
    def __init__(self, cfg: Config):
        self._cfg = cfg

    @property
    def cfg(self) -> Config:
        return self._cfg

    def swap(self, cfg: Config) -> Config:
        """Make ``cfg`` current for everyone; returns the previous one."""
        old, self._cfg = self._cfg, cfg
        return old


def plan_reload(current: Config, new: Config) -> Tuple[Config, List[str]]:
    """What a reload applies without restarting oracd: profiles and fallback_models.

    Returns the config to swap in and the sections whose other changes are
    ignored until a restart of oracd (listed to the caller, not silently dropped).
    """
    ignored = [name for name in ("server", "http") if getattr(new, name) != getattr(current, name)]
    if dataclasses.replace(new.llama, fallback_models=current.llama.fallback_models) != current.llama:
        ignored.append("llama")
    applied = dataclasses.replace(current, profiles=new.profiles,
                                  llama=dataclasses.replace(current.llama, fallback_models=new.llama.fallback_models))
    return applied, ignored


def load_options_changed(old: Config, new: Config, model: Optional[str]) -> bool:
    """Does ``model``'s llama-server command line differ between the two configs (restart needed)?"""
    if not model:
        return False
    before = (old.profile_for(model) or Profile(model="")).load_options()
    after = (new.profile_for(model) or Profile(model="")).load_options()
    return before != after
