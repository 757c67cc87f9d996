"""The docs cannot drift from the tree and the code.

- Every relative link in README.md and docs/*.md points at a file or directory that exists (URLs skipped),
  and every ``#anchor`` link within a page at one of its headings.
- Every ``examples/...`` or ``docs/...`` path they mention exists (a ``*`` or ``<placeholder>`` in it must
  match at least one path).
- Every condition reason named in docs/troubleshooting.md (a CamelCase name in backticks) appears in the
  code under operator/imagesync/, as a word or as a reason the code composes (``f"Run{phase}"`` gives
  RunFailed when ``Failed`` is a word of the code).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"
CODE = ROOT / "operator" / "imagesync"

INLINE_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
# A path starts at a word boundary that is not part of a longer path or URL (".../docs/x" is not one).
MENTIONED_PATH = re.compile(r"(?<![\w./~-])((?:examples|docs)/[\w./*<>{}+-]*)")
CAMEL_IN_BACKTICKS = re.compile(r"`([A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+)`")
# Names Kubernetes itself gives (Job conditions, events), which the troubleshooting page quotes but the
# operator does not set.
KUBERNETES_NAMES = frozenset({"DeadlineExceeded", "FailedCreate"})
# f"Prefix{expr}Suffix" strings that are a whole reason: the code composes these.
COMPOSED = re.compile(r"""f["']([A-Za-z]*)\{[^{}"']+\}([A-Za-z]*)["']""")


def _is_url(target: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)) or target.startswith("//")


def _links(text: str) -> list[str]:
    return INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens (duplicates get -1, -2)."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", _without_code_fences(text), flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n, candidate = 0, slug
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


def _without_code_fences(text: str) -> str:
    """Links inside fenced code blocks are text, not links."""
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_exist(doc: Path) -> None:
    missing = []
    text = doc.read_text(encoding="utf-8")
    anchors = _anchors(text)
    for target in _links(_without_code_fences(text)):
        if target.startswith("#"):
            if target[1:] not in anchors:
                missing.append(target)
            continue
        if _is_url(target):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        if path and not (doc.parent / path).exists():
            missing.append(target)
    assert not missing, f"{doc.relative_to(ROOT)}: links to nothing: {missing}"


def _mentioned_paths(text: str) -> set[str]:
    return {raw.rstrip(".,:;") for raw in MENTIONED_PATH.findall(text)}


def _exists(mention: str) -> bool:
    pattern = re.sub(r"<[^<>]*>", "*", mention)
    if "*" in pattern or "{" in pattern:
        pattern = re.sub(r"\{[^{}]*\}", "*", pattern)
        return any(ROOT.glob(pattern.rstrip("/")))
    return (ROOT / mention).exists()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_mentioned_paths_exist(doc: Path) -> None:
    mentions = _mentioned_paths(doc.read_text(encoding="utf-8"))
    missing = sorted(m for m in mentions if not _exists(m))
    assert not missing, f"{doc.relative_to(ROOT)} mentions paths that do not exist: {missing}"


def _code_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(CODE.rglob("*.py")))


def _in_code(name: str, code: str, words: set[str]) -> bool:
    if name in words:
        return True
    for prefix, suffix in COMPOSED.findall(code):
        if not (prefix or suffix) or not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        middle = name[len(prefix):len(name) - len(suffix)]
        if middle and middle in words:
            return True
    return False


def test_reasons_in_troubleshooting_exist_in_the_code() -> None:
    named = set(CAMEL_IN_BACKTICKS.findall(TROUBLESHOOTING.read_text(encoding="utf-8"))) - KUBERNETES_NAMES
    # The check is not vacuous: the page names the reasons users meet most.
    assert {"SecretNotOptedIn", "WorkerNotAllowed", "LoginRejected", "ImagePullBackOff",
            "RunPartiallyFailed"} <= named
    code = _code_text()
    words = set(re.findall(r"\w+", code))
    missing = sorted(name for name in named if not _in_code(name, code, words))
    assert not missing, f"docs/troubleshooting.md names reasons the code never uses: {missing}"


def test_the_checks_can_fail() -> None:
    code = _code_text()
    words = set(re.findall(r"\w+", code))
    assert not _in_code("SecretExploded", code, words)
    assert not _in_code("RunExploded", code, words)
    assert _mentioned_paths("see examples/nope.yaml, and https://x/docs/a.md") == {"examples/nope.yaml"}
    assert not _exists("examples/nope.yaml") and _exists("examples/imagesyncjob-<scenario>.yaml")
    assert "harbor-robot-account-401--403-on-push" in _anchors("## Harbor robot account: 401 / 403 on push")
    assert _links("[a](b.md) [c](https://x)\n[d]: e.md") == ["b.md", "https://x", "e.md"]
