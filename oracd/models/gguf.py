"""A lean GGUF header reader: the few scalar keys oracd lists and checks, in milliseconds.

Why not ``gguf.GGUFReader``: it parses every tensor and every tokenizer string
into numpy views, 3.2 s for the 98 MB SmolLM2 file here (and numpy costs the
daemon about 10 MB of RSS).  We walk the KV section ourselves with the ``gguf``
package's own enums (value types, file types) and skip arrays by length.
"""
from __future__ import annotations

import os
import struct
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..safe_read import open_regular, real_path


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
_SUFFIXES = (".context_length", ".block_count", ".attention.sliding_window", ".embedding_length",
             ".attention.head_count", ".attention.head_count_kv", ".attention.key_length", ".attention.value_length",
             ".attention.sliding_window_pattern")
#: arrays small enough to keep (a per-layer sliding-window pattern); others are skipped by length
_ARRAY_KEYS = (".attention.sliding_window_pattern",)
_QUANT_SIZES = {int(k): v for k, v in _constants.GGML_QUANT_SIZES.items()}   # type -> (block size, bytes)


DEFAULT_ALIGNMENT = 32   # GGUF's, unless general.alignment says otherwise

_CACHE: Dict[Tuple[str, int, int], Dict[str, Any]] = {}


def header(path: Path, st: Optional[os.stat_result] = None) -> Dict[str, Any]:
    """``read_gguf_header``, cached by (path, size, mtime): a big tokenizer takes tens of ms to walk, and
    every listing, load check and load asks.  A file that cannot be read is ``{"valid": False, "error"}``."""
    st = st or path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    meta = _CACHE.get(key)
    if meta is None:
        try:
            meta = read_gguf_header(path)
        except (OSError, ValueError, struct.error) as exc:
            meta = {"valid": False, "error": str(exc)}
        if len(_CACHE) > 1024:
            _CACHE.clear()
        _CACHE[key] = meta
    return meta


def read_gguf_header(path: Path) -> Dict[str, Any]:
    """A few scalar metadata keys from a GGUF file's KV section (arrays skipped, but for a per-layer
    sliding-window pattern), and ``weights_bytes``:
    the size of every tensor its tensor infos declare (what loading it costs).  ``truncated``: the tensor
    data those infos place (aligned start + offset + size) runs past the end of the file, so llama-server
    would fail to load it (``data_end``: where it should end)."""
    out: Dict[str, Any] = {"valid": False}
    # model files may be symlinks on purpose: open the resolved file, never a FIFO or device (safe_read)
    with open_regular(real_path(path)) as fh:
        size = os.fstat(fh.fileno()).st_size
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

        def skip(vtype: int, keep: bool = False) -> Any:
            if vtype in _SCALARS:
                fmt = _SCALARS[vtype]
                return struct.unpack(fmt, read(struct.calcsize(fmt)))[0]
            if vtype == GGUFValueType.STRING:
                return read_str()
            if vtype == GGUFValueType.ARRAY:
                etype, count = struct.unpack("<IQ", read(12))
                if count > size:
                    raise ValueError("corrupt GGUF array length")
                if keep and etype in _SCALARS and count <= 4096:
                    fmt = _SCALARS[etype]
                    return list(struct.unpack(f"<{count}{fmt[1:]}", read(struct.calcsize(fmt) * count)))
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
        alignment = DEFAULT_ALIGNMENT
        for _ in range(n_kv):
            key = read_str()
            (vtype,) = struct.unpack("<I", read(4))
            value = skip(vtype, keep=key.endswith(_ARRAY_KEYS))
            if key == "general.alignment" and isinstance(value, int) and value > 0:
                alignment = value
            if key in _WANTED_KEYS or key.endswith(_SUFFIXES):
                short = {"general.name": "model_name"}.get(key, key.split(".")[-1])
                if key == "general.file_type":
                    try:
                        value = LlamaFileType(value).name.replace("MOSTLY_", "")
                    except ValueError:
                        pass
                    short = "quantization"
                out[short] = value
        weights, data_end = 0, 0
        for _ in range(n_tensors):
            read_str()
            (n_dims,) = struct.unpack("<I", read(4))
            if n_dims > 8:
                raise ValueError("corrupt GGUF tensor info")
            dims = struct.unpack(f"<{n_dims}Q", read(8 * n_dims))
            (ttype,), (offset,) = struct.unpack("<I", read(4)), struct.unpack("<Q", read(8))
            block, type_size = _QUANT_SIZES.get(ttype, (1, 0))
            elements = 1
            for d in dims:
                elements *= d
            nbytes = elements // block * type_size
            weights += nbytes
            data_end = max(data_end, offset + nbytes)
        data_start = -(-fh.tell() // alignment) * alignment       # the tensor data begins aligned
        out["weights_bytes"] = weights
        out["data_end"] = data_start + data_end
        out["truncated"] = data_start + data_end > size     # tensor data runs past the end of the file
        out["valid"] = True
    return out
