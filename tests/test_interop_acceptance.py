"""Acceptance over the committed upstream configs, unchanged, with a hardware file (issue 11's bar).

Every LLaMA-Factory, axolotl and torchtune training config in tests/fixtures/upstream/ goes through
`advise FILE --hardware HW.yaml` from the tool's root (as their READMEs run them). Outcomes:
accepted (exit 0), model unavailable (the normal ModelNotFoundError: not in memfit's catalogue),
refused with a message (exit 2), or a traceback / internal error (never allowed). Rates are over the
files whose model is available: >= 90% for LLaMA-Factory, >= 80% for axolotl and torchtune.
"""
from __future__ import annotations

import collections

import pytest

from memfit.cli.main import main
from memfit.engine.integrations.foreign import detect_format

from upstream import FIXTURES, HW_8X80, configs, tool_root

THRESHOLD = {"llamafactory": 0.90, "axolotl": 0.80, "torchtune": 0.80}
UNAVAILABLE = ("not in the bundled catalogue", "knows no Hugging Face checkpoint")


def outcome(tool: str, path: str, hw, capsys) -> tuple[str, str]:
    code = main([path, "--hardware", str(hw)])
    err = capsys.readouterr().err
    if code == 0:
        return "accepted", ""
    if code == 2 and any(s in err for s in UNAVAILABLE):
        return "model unavailable", err.strip().splitlines()[0]
    return ("refused" if code == 2 else "TRACEBACK"), err.strip()


@pytest.mark.slow
@pytest.mark.parametrize("tool", sorted(THRESHOLD))
def test_upstream_configs_are_accepted(tool, tmp_path, monkeypatch, capsys):
    hw = tmp_path / "hw.yaml"
    hw.write_text(HW_8X80)
    monkeypatch.chdir(tool_root(tool, tmp_path / tool))
    results = {path: outcome(tool, path, hw, capsys) for path in configs(tool)}
    counts = collections.Counter(kind for kind, _ in results.values())
    available = len(results) - counts["model unavailable"]
    rate = counts["accepted"] / available
    print(f"\n{tool}: {counts['accepted']}/{available} accepted ({rate:.0%}) of {len(results)} files; "
          f"{counts['model unavailable']} model unavailable; {counts['refused']} refused")
    for path, (kind, detail) in sorted(results.items()):
        if kind != "accepted":
            print(f"  {kind}: {path}: {detail[:160]}")
    assert counts["TRACEBACK"] == 0, {p: d for p, (k, d) in results.items() if k == "TRACEBACK"}
    assert rate >= THRESHOLD[tool]


def test_every_fixture_is_recognised_by_its_keys():
    # Detection reads keys only (no model, no hardware): fast enough for the quick suite.
    expected = {"llamafactory": "llamafactory", "axolotl": "axolotl", "torchtune": "torchtune"}
    for tool, kind in expected.items():
        for path in configs(tool):
            if "/v1/" in path:
                continue  # LLaMA-Factory's v1 format: refused with its own message (test_llamafactory)
            assert detect_format(FIXTURES / tool / path.replace("/", "__")) == kind, path
