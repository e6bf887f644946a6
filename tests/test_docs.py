"""Docs that are generated from code stay in sync, and shipped data files are documented."""
from __future__ import annotations

import json

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
