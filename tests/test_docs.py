"""Docs that are generated from code stay in sync, and shipped data files are documented."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from memfit.engine.policy.vocabulary import facts_reference_markdown
from memfit.engine.advice.schema_export import schema_texts

from conftest import EXAMPLES, ROOT


def test_facts_reference_is_current():
    assert (ROOT / "docs" / "reference" / "facts.md").read_text() == facts_reference_markdown(), \
        "regenerate docs/reference/facts.md from memfit.engine.policy.vocabulary.facts_reference_markdown()"


def test_generated_schemas_match_the_models():
    for name, text in schema_texts().items():
        committed = (ROOT / "schemas" / name).read_text()
        assert json.loads(committed) == json.loads(text), \
            f"schemas/{name} is stale: python -m memfit.engine.advice.schema_export schemas/"


def test_every_shipped_yaml_opens_with_a_comment():
    # Data files are documentation: each says what it is for and how to run it (STYLE.md).
    for f in [*EXAMPLES.glob("*.yaml"), *(ROOT / "rules").glob("*.yaml")]:
        first = f.read_text().lstrip().splitlines()[0]
        assert first.startswith("#"), f"{f.name} must open with a comment saying what it is for"


@pytest.mark.slow  # ~2 s: advises every example plan
def test_every_example_plan_loads_and_advises():
    from memfit.engine import advise

    for f in EXAMPLES.glob("*.yaml"):
        assert advise(f).candidates, f.name


def test_relative_links_in_docs_resolve():
    import re

    pages = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to missing {target}"


def test_nothing_points_outside_the_repository():
    # A clone has no ../shared: every fact a doc, rule or comment cites is in docs/explanation/sources.md.
    outside = []
    for top in ("docs", "engine", "rules", "cli", "bench", "tests", "examples"):
        for path in (ROOT / top).rglob("*"):
            if path.suffix not in (".md", ".py", ".yaml", ".json") or "fixtures" in path.parts or path == Path(__file__):
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            outside += [f"{path.relative_to(ROOT)}: {ref}" for ref in ("../shared", "DOMAIN.md") if ref in text]
    outside += [f"README.md: {ref}" for ref in ("../shared", "DOMAIN.md") if ref in (ROOT / "README.md").read_text()]
    assert outside == []


def test_sources_page_has_every_cited_section():
    cited = set()
    for top in ("docs", "engine", "rules", "cli", "tests"):
        for path in (ROOT / top).rglob("*"):
            if path.suffix in (".md", ".py", ".yaml", ".json"):
                cited |= set(re.findall(r"sources\.md §(\d)", path.read_text(encoding="utf-8", errors="replace")))
    page = (ROOT / "docs" / "explanation" / "sources.md").read_text()
    assert cited and all(f"## §{n} " in page for n in cited), sorted(cited)
