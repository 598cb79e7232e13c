"""The model store: client names -> files confined to the models dirs, listing, cached metadata.

Header metadata comes from ``gguf.read_gguf_header``, cached by (path, size, mtime).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from oracd_protocol.errors import InvalidParams, InvalidPath, ModelNotFound
from .gguf import header


def _check_name(name: Any, what: str = "model") -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidParams(f"{what} must be a non-empty file name")
    if "\x00" in name:
        raise InvalidPath(f"{what} name contains a NUL byte")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPath(f"{what} name is not valid Unicode") from None
    if len(encoded) + (0 if name.endswith(".gguf") else 5) > 255:
        raise InvalidPath(f"{what} name longer than 255 bytes")
    if name.startswith("/") or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise InvalidPath(f"{what} must be a file name inside the models dir, not a path: {name!r}")
    return name if name.endswith(".gguf") else name + ".gguf"


def _inside(path: Path, dirs: Sequence[Path]) -> bool:
    real = path.resolve()
    return any(real.is_relative_to(d.resolve()) for d in dirs)


@dataclass(frozen=True)
class ModelFile:
    """A model as oracd serves it: its ``name`` (the file name in the models dir, a link's own name) and
    ``path``, the target resolved once when the name was checked.

    Why both: a link in the models dir may be flipped by anyone who can write there between our check and
    llama-server's open.  Children get ``path`` (already checked, no links left to follow), while status,
    --alias and list_models keep the name the client used.  ``os.fspath(model)`` is ``path``.
    """
    name: str
    path: Path

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)


class ModelStore:
    """The models dirs oracd serves: the first one is where quantize writes.

    Names from clients are always plain file names inside these dirs.  A file
    there may be a symlink to a model elsewhere (operators keep models on another
    disk and link them in): it is listed and served, unless ``confine_links``,
    which refuses links that lead outside the models dirs.  Quantize never writes
    through a link (``quantize.py``).
    """

    def __init__(self, dirs: Sequence[Path], confine_links: bool = False):
        self.dirs: Tuple[Path, ...] = tuple(Path(d) for d in dirs)
        self.confine_links = confine_links

    @property
    def primary(self) -> Path:
        return self.dirs[0]

    def serves(self, path: str) -> bool:
        """True if ``path`` names one of the served models dirs."""
        try:
            real = Path(path).expanduser().resolve()
        except (OSError, RuntimeError, ValueError):   # ValueError: embedded NUL byte
            return False
        return any(real == d.resolve() for d in self.dirs)

    def resolve(self, name: Any) -> ModelFile:
        """An existing model file; ``.gguf`` optional; never outside the models dirs.

        The link (if any) is resolved ONCE, and the resolved target is what is checked (inside the dirs when
        confined; a regular file) and what children are given: a link flipped after this check changes
        nothing for this request.
        """
        fname = _check_name(name)
        for d in self.dirs:
            cand = d / fname
            if cand.is_symlink() or cand.exists():
                try:
                    real = Path(os.path.realpath(cand, strict=True))
                except (OSError, RuntimeError):       # dangling or looping link
                    raise ModelNotFound(f"Model not found: {cand}", {"path": str(cand)}) from None
                if self.confine_links and not any(real.is_relative_to(x.resolve()) for x in self.dirs):
                    raise InvalidPath(f"model {fname!r} is a link that leads outside the models dir "
                                      f"(llama.confine_model_links = true)")
                if not real.is_file():
                    raise ModelNotFound(f"Model not found: {cand}", {"path": str(cand)})
                return ModelFile(fname, real)
        path = self.primary / fname
        raise ModelNotFound(f"Model not found: {path}", {"path": str(path)})

    def checked_name(self, name: Any) -> str:
        """``name`` as a model file name (``.gguf`` added), checked like every client name; need not exist."""
        return _check_name(name)

    def output_path(self, name: Any) -> Path:
        """Where a new model named ``name`` would be written (primary dir); name checked."""
        return self.primary / _check_name(name, "output_model")

    def iter_files(self) -> Iterable[Path]:
        seen = set()
        for d in self.dirs:
            try:
                entries = sorted(d.iterdir())
            except FileNotFoundError:
                continue
            for p in entries:
                if p.suffix != ".gguf" or p.name.startswith(".") or p.name in seen:
                    continue
                if not p.is_file() or (self.confine_links and not _inside(p, self.dirs)):
                    continue
                seen.add(p.name)
                yield p

    def describe(self, path: Union[Path, "ModelFile"], loaded: Optional[str]) -> Dict[str, Any]:
        """A listing item: a file in a models dir, or a resolved ``ModelFile`` (its name, its target's data)."""
        real = Path(os.fspath(path))
        st = real.stat()
        item: Dict[str, Any] = {
            "name": path.name, "size": st.st_size, "modified": st.st_mtime,
            "backend": "llama_cpp", "loaded": path.name == loaded, "path": str(real),
        }
        item.update(self.metadata(real, st))
        return item

    def list(self, loaded: Optional[str]) -> List[Dict[str, Any]]:
        out = []
        for p in self.iter_files():
            try:
                out.append(self.describe(p, loaded))
            except FileNotFoundError:  # removed while listing
                continue
        return out

    def metadata(self, path: Union[Path, "ModelFile"], st: Optional[os.stat_result] = None) -> Dict[str, Any]:
        return header(Path(os.fspath(path)), st)
