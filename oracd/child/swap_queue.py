"""Which model the child should run next.  Pure: no I/O, no clock.  The owner loop is its only writer.

Rules (llama-swap's scheduler is the model):
- requests for the current model are served by it; a request for another model
  queues that model, once, in arrival order;
- the child moves on to the next queued model only when nobody waits for the
  current one any more, so a swap serves everyone who asked for the new model
  before swapping back: no ping-pong;
- a model whose waiters all gave up (timeout, hang-up) is skipped;
- a fresh load that fails gives the child back to the model that was serving
  right before it (``take_previous``): a bad model never costs the warm one.
"""
from __future__ import annotations

from collections import deque
from typing import Deque, Dict, Optional


class SwapQueue:
    def __init__(self) -> None:
        self.current: Optional[str] = None      # the model the child should run now (None: nothing)
        self.never_ready = True                 # True until ``current`` has been ready once
        self.previous: Optional[str] = None     # the model that was serving when ``current`` replaced it
        self._order: Deque[str] = deque()       # other models asked for, in arrival order
        self._waiting: Dict[str, int] = {}      # model -> requests waiting for it

    def arrive(self, model: str) -> None:
        """A request waits for ``model``."""
        self._waiting[model] = self._waiting.get(model, 0) + 1
        if self.current is None:
            self._set(model)
        elif model != self.current and model not in self._order:
            self._order.append(model)

    def leave(self, model: str) -> None:
        """A request stopped waiting for ``model`` (served, failed, or gave up)."""
        left = self._waiting.get(model, 0) - 1
        if left > 0:
            self._waiting[model] = left
        else:
            self._waiting.pop(model, None)

    def unload(self) -> None:
        """Run nothing (until a request arrives or a queued model is next)."""
        self._set(None)

    def want(self, model: Optional[str]) -> None:
        """Make ``model`` current now (an explicit choice: preload, return to default)."""
        self._set(model)

    def advance(self) -> Optional[str]:
        """If nobody waits for the current model, move to the next queued model that still has waiters.
        Returns the new current model, or None if nothing changed."""
        if self.current is not None and self._waiting.get(self.current):
            return None
        while self._order:
            model = self._order.popleft()
            if model != self.current and self._waiting.get(model):
                self._set(model)
                return model
        return None

    def swap_due(self) -> bool:
        """Would ``advance`` move to another model now?"""
        return not self._waiting.get(self.current) and any(self._waiting.get(m) for m in self._order
                                                             if m != self.current)

    def served(self) -> None:
        """The current model became ready."""
        self.never_ready = False

    def take_previous(self, failed: str) -> Optional[str]:
        """``failed`` (current, never ready) could not be loaded: make the model that was serving before it
        current again and return it; None if there was none (a start from nothing, or a restore that failed
        itself: no ping-pong)."""
        prev = self.previous
        if prev is None or prev == failed or self.current != failed or not self.never_ready:
            return None
        self._set(prev)
        return prev

    def _set(self, model: Optional[str]) -> None:
        if model != self.current:
            # remember what served until now (only a model that was ready: not a load that never finished)
            self.previous = self.current if self.current is not None and not self.never_ready else None
            self.current, self.never_ready = model, True
        if model is not None and model in self._order:
            self._order.remove(model)
