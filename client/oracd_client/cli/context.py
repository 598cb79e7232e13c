"""What every oracctl command gets (``Ctx``): the parsed options, where oracd is, how to print, one call.

Every call is one blocking connection of its own (``oracd_protocol.blocking.call_sync``):
Ctrl-C closes it, and oracd aborts a request whose client hung up.  The exit codes
live here because commands return them and ``main`` maps exceptions to them.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Dict, Optional, TextIO

from oracd_protocol.blocking import call_sync
from oracd_protocol.names import default_socket_path

from . import format as fmt

EXIT_OK = 0
EXIT_ERROR = 1          # oracd answered with an error (or did not answer in time)
EXIT_USAGE = 2          # bad command line (argparse's own code)
EXIT_DOWN = 3           # oracd not running / socket missing / connection lost
EXIT_PERMISSION = 4     # the socket (or its directory) is not ours to open, or oracd refused our uid
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_PIPE = 141         # stdout closed early (| head)

#: The client-side bound of a call that may take as long as it takes (quantize, a load without --timeout).
FOREVER = 7 * 24 * 3600.0


class Ctx:
    """What every command needs: where oracd is, how to print."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO):
        self.args = args
        self.socket: str = args.socket or default_socket_path()
        self.json: bool = bool(args.json)
        self.out = out
        self.err = err
        no_colour = bool(getattr(args, "no_color", False))
        self.colour_out = fmt.colour_ok(out) and not no_colour
        self.colour_err = fmt.colour_ok(err) and not no_colour
        self.out_at_line_start = True      # for a clean newline after an interrupted stream
        self.asked_status = False

    def call(self, method: str, params: Optional[Dict[str, Any]] = None, timeout: float = 60.0,
             on_notify: Optional[Callable[[str, Dict[str, Any]], None]] = None) -> Any:
        return call_sync(method, params or {}, socket_path=self.socket, timeout=timeout, on_notify=on_notify)

    def write(self, text: str, flush: bool = False) -> None:
        if text:
            self.out.write(text)
            self.out_at_line_start = text.endswith("\n")
            if flush:
                self.out.flush()

    def print(self, text: str = "") -> None:
        self.write(text + "\n")

    def print_json(self, obj: Any, compact: bool = False) -> None:
        self.print(fmt.dumps(obj, compact))

    def note(self, text: str, style: str = "dim") -> None:
        """A line for humans on stderr (stats, hints)."""
        self.err.write(fmt.paint(text, style, self.colour_err) + "\n")
        self.err.flush()
