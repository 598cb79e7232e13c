"""Model files: name -> path resolution confined to the models dirs, listing, GGUF metadata.

Why a lean header reader: ``gguf.GGUFReader`` parses every tensor and every
tokenizer string into numpy views, 3.2 s for the 98 MB SmolLM2 file here; we only
need a few scalar keys, so we walk the KV section ourselves with the ``gguf``
package's own enums (value types, file types) and skip arrays by length.  Results
are cached by (path, size, mtime).
"""
from __future__ import annotations

import os
import struct
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import InvalidParams, InvalidPath, ModelLoadFailed, ModelNotFound


def _gguf_constants() -> Any:
    """The ``gguf`` package's constants module, without running ``gguf/__init__``.

    That __init__ imports numpy and the tensor readers: about 10 MB of oracd's
    resident memory for two enums.  constants.py itself needs only the stdlib.
    Falls back to the normal import if the package is laid out differently.
    """
    import importlib.util
    spec = importlib.util.find_spec("gguf")
    locations = list(spec.submodule_search_locations or ()) if spec else []
    path = Path(locations[0]) / "constants.py" if locations else None
    if path is None or not path.is_file():
        import gguf
        return gguf
    cspec = importlib.util.spec_from_file_location("oracd._gguf_constants", path)
    module = importlib.util.module_from_spec(cspec)
    sys.modules[cspec.name] = module
    cspec.loader.exec_module(module)
    return module


_constants = _gguf_constants()
GGUFValueType = _constants.GGUFValueType
LlamaFileType = _constants.LlamaFileType

GGUF_MAGIC = b"GGUF"
_SCALARS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_WANTED_KEYS = ("general.architecture", "general.name", "general.file_type", "general.size_label")
_SUFFIXES = (".context_length", ".block_count")


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
        self._meta_cache: Dict[Tuple[str, int, int], Dict[str, Any]] = {}

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

    def resolve(self, name: Any) -> Path:
        """Path of an existing model file; ``.gguf`` optional; never outside the models dirs."""
        fname = _check_name(name)
        for d in self.dirs:
            cand = d / fname
            if cand.is_symlink() or cand.exists():
                if self.confine_links and not _inside(cand, self.dirs):
                    raise InvalidPath(f"model {fname!r} is a link that leads outside the models dir "
                                      f"(llama.confine_model_links = true)")
                if not cand.is_file():
                    raise ModelNotFound(f"Model not found: {cand}", {"path": str(cand)})
                return cand
        path = self.primary / fname
        raise ModelNotFound(f"Model not found: {path}", {"path": str(path)})

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

    def describe(self, path: Path, loaded: Optional[str]) -> Dict[str, Any]:
        st = path.stat()
        item: Dict[str, Any] = {
            "name": path.name, "size": st.st_size, "modified": st.st_mtime,
            "backend": "llama_cpp", "loaded": path.name == loaded, "path": str(path),
        }
        item.update(self.metadata(path, st))
        return item

    def list(self, loaded: Optional[str]) -> List[Dict[str, Any]]:
        out = []
        for p in self.iter_files():
            try:
                out.append(self.describe(p, loaded))
            except FileNotFoundError:  # removed while listing
                continue
        return out

    def metadata(self, path: Path, st: Optional[os.stat_result] = None) -> Dict[str, Any]:
        st = st or path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        meta = self._meta_cache.get(key)
        if meta is None:
            try:
                meta = read_gguf_header(path)
            except (OSError, ValueError, struct.error) as exc:
                meta = {"valid": False, "error": str(exc)}
            if len(self._meta_cache) > 1024:
                self._meta_cache.clear()
            self._meta_cache[key] = meta
        return meta


def check_gguf(path: Path) -> None:
    """Cheap sanity check before handing a file to llama-server (so a bad file never evicts a good model)."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelLoadFailed(f"cannot read model {path.name}: {exc.strerror}", {"path": str(path)}) from None
    if magic != GGUF_MAGIC:
        raise ModelLoadFailed(f"not a GGUF file: {path.name} (bad magic {magic!r})",
                              {"path": str(path), "reason": "not_gguf"})
    meta = read_gguf_header(path)
    if not meta.get("valid"):
        raise ModelLoadFailed(f"corrupt GGUF file: {path.name}: {meta.get('error')}",
                              {"path": str(path), "reason": "corrupt"})


def read_gguf_header(path: Path) -> Dict[str, Any]:
    """A few scalar metadata keys from a GGUF file's KV section (arrays skipped)."""
    size = path.stat().st_size
    out: Dict[str, Any] = {"valid": False}
    with open(path, "rb") as fh:
        def read(n: int) -> bytes:
            b = fh.read(n)
            if len(b) != n:
                raise ValueError("truncated GGUF header")
            return b

        def read_str() -> str:
            (n,) = struct.unpack("<Q", read(8))
            if n > size:
                raise ValueError("corrupt GGUF string length")
            return read(n).decode("utf-8", "replace")

        def skip(vtype: int) -> Any:
            if vtype in _SCALARS:
                fmt = _SCALARS[vtype]
                return struct.unpack(fmt, read(struct.calcsize(fmt)))[0]
            if vtype == GGUFValueType.STRING:
                return read_str()
            if vtype == GGUFValueType.ARRAY:
                etype, count = struct.unpack("<IQ", read(12))
                if count > size:
                    raise ValueError("corrupt GGUF array length")
                if etype in _SCALARS:
                    fh.seek(struct.calcsize(_SCALARS[etype]) * count, os.SEEK_CUR)
                else:
                    for _ in range(count):
                        skip(etype)
                return None
            raise ValueError(f"unknown GGUF value type {vtype}")

        if read(4) != GGUF_MAGIC:
            raise ValueError("not a GGUF file (bad magic)")
        version, n_tensors, n_kv = struct.unpack("<IQQ", read(20))
        if n_kv > 1_000_000 or n_tensors > 10_000_000:
            raise ValueError("corrupt GGUF header counts")
        out.update(gguf_version=version, tensor_count=n_tensors)
        for _ in range(n_kv):
            key = read_str()
            (vtype,) = struct.unpack("<I", read(4))
            value = skip(vtype)
            if key in _WANTED_KEYS or key.endswith(_SUFFIXES):
                short = {"general.name": "model_name"}.get(key, key.split(".")[-1])
                if key == "general.file_type":
                    try:
                        value = LlamaFileType(value).name.replace("MOSTLY_", "")
                    except ValueError:
                        pass
                    short = "quantization"
                out[short] = value
        out["valid"] = True
    return out
