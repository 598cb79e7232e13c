"""Every relative link and #anchor in the README, docs/ and bench/README.md resolves.

The docs are split over several pages that point at each other and at the code; a moved file or a
renamed heading breaks a link silently.  Anchors are checked against GitHub's heading slugs, the
ones a reader's browser follows."""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted([REPO / "README.md", REPO / "bench" / "README.md", *(REPO / "docs").glob("*.md")])

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(\S+)", re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup gone, lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)      # links keep their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = text.strip().lower()
    return "".join(c for c in text if c in "-_ " or unicodedata.category(c)[0] in "LMN").replace(" ", "-")


def prose(text: str) -> str:
    """The text without fenced blocks, where '#' starts a comment and links are not links."""
    return _FENCE.sub("", text)


def anchors(page: Path) -> set:
    seen: dict = {}
    out = set()
    for line in prose(page.read_text()).splitlines():
        m = re.match(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list:
    text = _CODE_SPAN.sub("", prose(page.read_text()))
    return _LINK.findall(text) + _REF_DEF.findall(text)


def test_github_slugs():
    assert slug("Output constraints (grammar, json_schema, command)") == "output-constraints-grammar-json_schema-command"
    assert slug("By error `data.reason`") == "by-error-datareason"
    assert slug("Today's ORAC") == "todays-orac"
    assert slug("Setup: a build that runs where it was built") == "setup-a-build-that-runs-where-it-was-built"


def test_a_broken_link_is_caught(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Top\n\n[ok](#top) [bad](#nowhere) `[code](#ignored)`\n\n```\n[x](#fenced)\n```\n")
    assert links(page) == ["#top", "#nowhere"]
    assert "top" in anchors(page) and "nowhere" not in anchors(page)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page):
    assert page.exists(), page
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):          # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        if not path:
            dest = page
        elif path.startswith("/"):                                     # GitHub: from the repository root
            dest = (REPO / path.lstrip("/")).resolve()
        else:
            dest = (page.parent / path).resolve()
        if not dest.is_relative_to(REPO):
            broken.append(f"{target}: outside the repository")
        elif not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}:\n  " + "\n  ".join(broken)


def test_each_docs_page_opens_with_what_it_is_for():
    for page in sorted((REPO / "docs").glob("*.md")):
        lines = page.read_text().splitlines()
        assert lines[0].startswith("# "), page
        first = next(line for line in lines[1:] if line.strip())
        assert not first.startswith(("#", "|", "```", "-")), f"{page.name}: opens with {first!r}, not a sentence"


def test_the_readme_is_a_front_page():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    first_screen = "\n".join(text.splitlines()[:40])
    assert "scripts/dev-up" in first_screen and "scripts/test" in first_screen


_TEST_REF = re.compile(r"((?:tests/)?(?:(?:unit|fake|real)/)?test_[a-z0-9_]+\.py)(?:::([A-Za-z0-9_]+))?")


def test_every_test_the_docs_name_exists():
    """The reliability table and the rest name tests as evidence: each named file and function must exist
    (a test moved between layers or merged away must take its references with it)."""
    files: dict = {}
    for p in (REPO / "tests").glob("*/test_*.py"):
        files.setdefault(p.name, []).append(p)
    missing = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for m in _TEST_REF.finditer(page.read_text()):
            ref, name = m.group(1), m.group(2)
            layered = re.match(r"(?:tests/)?(unit|fake|real)/", ref)
            paths = [REPO / "tests" / ref.split("tests/")[-1]] if layered else files.get(Path(ref).name, [])
            paths = [p for p in paths if p.exists()]
            if not paths:
                missing.append(f"{page.name}: {ref}")
            elif name and not any(re.search(rf"def {re.escape(name)}\b", p.read_text()) for p in paths):
                missing.append(f"{page.name}: {ref}::{name}")
    assert not missing, "\n".join(missing)
