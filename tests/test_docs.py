"""The documents' links: every relative link and picture in README.md and docs/*.md names a file of the repository
(outside code), so a moved or renamed file cannot leave a broken picture behind."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def relative_links(text: str) -> list[str]:
    """The targets of ``[text](target)`` and ``![alt](target)`` outside fenced and inline code, without web
    addresses and anchors."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text)]
    return [t for t in targets if t and not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_relative_links_finds_links_and_pictures_but_not_code():
    text = "see [a](docs/A.md#x), ![p](eval/p.png), [web](https://x.org) and `f[i](X)`\n```\nd[k](Y)\n```\n"
    assert relative_links(text) == ["docs/A.md", "eval/p.png"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_names_a_file(doc):
    missing = [t for t in relative_links(doc.read_text()) if not (doc.parent / t).exists()]
    assert not missing, f"{doc.relative_to(ROOT)} links to missing files: {missing}"
