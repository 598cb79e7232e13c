"""Who may change state for everyone: the admin split (``server.admin_uids`` / ``server.admin_gids``).

Why a second list next to allowed_uids/gids: every allowed client may generate,
but quantize_model (disk), reload (config), start_server/stop_server (processes
and ports), a persisted prewarm and clear_prewarm (what every later load does)
act for all clients.  With neither list set, every allowed client may (the
behaviour before the split).  Pure: decides from the peer and the config.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from oracd_protocol.errors import AccessDenied

from ..config import Config

#: the methods (and the prewarm form) that need an admin when admin_uids/admin_gids are set
ADMIN_METHODS = ("quantize_model", "reload", "start_server", "stop_server", "prewarm (persist=true)", "clear_prewarm")


def is_admin(cfg: Config, peer: Any, own_uid: Optional[int] = None) -> bool:
    """True if ``peer`` may call the admin methods.  Root and oracd's own uid always may (they can edit the
    config and restart oracd anyway); a peer whose uid is unknown never may when the lists are set."""
    uids, gids = cfg.server.admin_uids, cfg.server.admin_gids
    if not uids and not gids:
        return True
    uid = getattr(peer, "uid", None)
    if uid is None:
        return False
    if uid == 0 or uid == (os.getuid() if own_uid is None else own_uid) or uid in uids:
        return True
    groups = {getattr(peer, "gid", None), *(getattr(peer, "groups", None) or ())}
    return any(g in gids for g in groups if g is not None)


def require_admin(cfg: Config, peer: Any, what: str) -> None:
    """Raise AccessDenied (-32013, reason "not_admin") naming the settings, unless ``peer`` is an admin."""
    if is_admin(cfg, peer):
        return
    raise AccessDenied(
        f"{what} changes oracd for every client: only server.admin_uids / server.admin_gids may call it "
        f"(uid {getattr(peer, 'uid', None)}, gid {getattr(peer, 'gid', None)} is in neither)",
        {"reason": "not_admin", "method": what.split(" ")[0], "settings": ["server.admin_uids", "server.admin_gids"]})
