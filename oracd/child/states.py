"""The child's states and the only legal moves between them (a leaf module, like supervisord's states.py).

::

    stopped --a model is wanted--> starting --/health 200 (and warm-up)--> ready
    ready --another model wanted, or unload--> stopping (after in-flight requests drain) --> stopped
    ready --crash, hang--> backoff --delay--> starting          (restart; the delay grows)
    starting --load fails--> failed (an explicit load) | backoff (restarting a model that was ready)
    any but shutdown --oracd stops--> stopping --> shutdown

Only the supervisor's owner loop moves the state, through ``check_transition``,
which refuses anything not in ``LEGAL``: a bug shows up as an error naming both
states instead of a silently odd status.
"""
from __future__ import annotations

import enum
from typing import Dict, FrozenSet


class ChildState(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    BACKOFF = "backoff"
    FAILED = "failed"
    SHUTDOWN = "shutdown"


S = ChildState
LEGAL: Dict[ChildState, FrozenSet[ChildState]] = {
    S.STOPPED: frozenset({S.STARTING, S.SHUTDOWN}),
    # a start can fail before or after spawning (failed / backoff), be abandoned (stopping), or succeed
    S.STARTING: frozenset({S.READY, S.STOPPING, S.FAILED, S.BACKOFF, S.SHUTDOWN}),
    S.READY: frozenset({S.STOPPING, S.BACKOFF}),
    # a stop ends stopped, or (a load that failed) failed / backoff, or shutdown
    S.STOPPING: frozenset({S.STOPPED, S.FAILED, S.BACKOFF, S.SHUTDOWN}),
    # backoff waits to restart; an unload or another model ends it; a new delay replaces the old one
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED, S.BACKOFF, S.SHUTDOWN}),
    S.FAILED: frozenset({S.STARTING, S.STOPPED, S.SHUTDOWN}),
    S.SHUTDOWN: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A state change the table does not allow: a bug in the owner loop."""


def check_transition(prev: ChildState, new: ChildState) -> None:
    if new not in LEGAL[prev]:
        raise IllegalTransition(f"illegal child state change {prev.value} -> {new.value} "
                                f"(legal from {prev.value}: {', '.join(sorted(s.value for s in LEGAL[prev])) or 'none'})")
