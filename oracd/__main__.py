"""``oracd --config PATH``: run the daemon in the foreground (systemd runs it this way too)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import anyio

from . import __version__, config, logs


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="oracd", description="Supervise one warm llama-server and serve "
                                 "generate/list_models/quantize as JSON-RPC over a Unix socket.")
    ap.add_argument("--config", "-c", type=Path, default=Path("/etc/oracd/oracd.toml"),
                    help="TOML config file (default: %(default)s)")
    ap.add_argument("--check", action="store_true", help="validate the config and exit")
    ap.add_argument("--version", action="version", version=f"oracd {__version__}")
    args = ap.parse_args(argv)
    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        print(f"oracd: config error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        from .api.listener import StartupError, socket_gid
        try:
            socket_gid(cfg)
        except StartupError as exc:
            print(f"oracd: config error: {exc}", file=sys.stderr)
            return 2
        print(f"oracd: config OK: {cfg.path}")
        return 0
    try:
        logs.setup(cfg)
    except OSError as exc:
        print(f"oracd: cannot open log dir {cfg.server.log_dir}: {exc}", file=sys.stderr)
        return 1
    from .serve import serve
    try:
        options = loop_options(cfg.server.event_loop)
    except ImportError:
        print("oracd: server.event_loop = \"uvloop\" but uvloop is not installed", file=sys.stderr)
        return 2
    return anyio.run(serve, cfg, backend="asyncio", backend_options=options)


def loop_options(choice: str) -> dict:
    """uvloop when asked or, for "auto", when installed (a dependency on Linux): it takes a
    measurable share off every round trip (bench/README.md).  Everything works on both."""
    if choice == "asyncio":
        return {}
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            raise
        return {}
    return {"use_uvloop": True}


if __name__ == "__main__":
    sys.exit(main())
