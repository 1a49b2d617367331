"""The repository's docs stand alone: nothing points outside the repository."""

from __future__ import annotations

import re

import pytest

from tests.utils import ROOT

DOCS = ["README.md", "docs/ARCHITECTURE.md"]


@pytest.mark.parametrize("name", DOCS)
def test_no_reference_leaves_the_repository(name: str) -> None:
    text = (ROOT / name).read_text()
    # A parent-directory path ("../shared/ARCHITECTURE.md" once held the contracts); an
    # ellipsis in a path, `PUT .../files`, is not one.
    assert not re.search(r"(?<!\.)\.\./", text)
    assert "http://" not in text.replace("http://127.0.0.1", "").replace("http://localhost", "")
    assert "https://" not in text
    # Every repository path a doc names in backticks exists (a file or a folder).
    for path in re.findall(
        r"`((?:docs|scripts|gateway|supervisor|shared|bench|tests)/[\w./-]*)`", text
    ):
        assert (ROOT / path).exists(), f"{name} names {path}, which is not in the repository"


def test_readme_leads_to_the_architecture() -> None:
    assert "`docs/ARCHITECTURE.md`" in (ROOT / "README.md").read_text()
