"""Docs that cannot drift: every `advise` command shown in README.md and docs/ runs, every output shown
is what the program prints, and docs/reference/cli.md is the click commands' own description.

A command is any line of a fenced block that starts with `advise` or `.venv/bin/advise` (what follows
`#` is a comment). An output is the fenced block right after a marker line
`<!-- output: advise ARGS -->`; inside it, a line `...` elides: the chunks between elisions must appear
in the program's output in order, each as consecutive lines. Only durations (`5.1 s`) are normalised.
Commands run in a scratch folder holding links to examples/ and tests/, so `--out out/` writes there;
the commands of one page run in order in one folder. `verify`, `probe`, `review` and `detect` run
torch or DeepSpeed and are in the slow tier.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from memfit.cli.main import cli, main
from memfit.cli.reference import EXIT_CODES, cli_reference_markdown

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SLOW = {"verify", "probe", "review", "detect"}
_MARKER = re.compile(r"^<!-- output: (.+?) -->\s*$")
_FENCE = re.compile(r"^```")


def _blocks(text: str):
    """(marker command or None, lines) for every fenced block of a page."""
    lines, i, marker = text.splitlines(), 0, None
    while i < len(lines):
        m = _MARKER.match(lines[i])
        if m:
            marker = m.group(1)
        elif _FENCE.match(lines[i]):
            end = next(j for j in range(i + 1, len(lines)) if _FENCE.match(lines[j]))
            yield marker, lines[i + 1:end]
            marker, i = None, end
        elif lines[i].strip():
            marker = None
        i += 1


def _argv(line: str) -> list[str] | None:
    if not re.match(r"\s*(\.venv/bin/)?advise\b", line):
        return None
    words = shlex.split(line, comments=True)
    if words and words[0] in ("advise", ".venv/bin/advise"):
        return words[1:]
    return None


def page_steps(page: Path) -> list[tuple[list[str], list[str] | None]]:
    """(argv, shown output lines or None) in page order."""
    steps = []
    for marker, lines in _blocks(page.read_text()):
        if marker is not None:
            argv = _argv(marker)
            assert argv is not None, f"{page.name}: output marker must name an advise command: {marker}"
            steps.append((argv, lines))
        else:
            steps += [(argv, None) for argv in map(_argv, lines) if argv is not None]
    return steps


def _command_name(argv: list[str]) -> str:
    return argv[0] if argv and argv[0] in cli.commands else "plan"


def _norm(text: str) -> list[str]:
    return [re.sub(r"\b\d+(\.\d+)? s\b", "N s", line.rstrip()) for line in text.rstrip("\n").splitlines()]


def assert_shown(shown: list[str], actual: str, where: str) -> None:
    """The shown lines, with `...` elisions, appear in order in the actual output."""
    got, pos = _norm(actual), 0
    chunks, chunk = [], []
    for line in _norm("\n".join(shown)):
        if line.strip() == "...":
            chunks.append(chunk)
            chunk = []
        else:
            chunk.append(line)
    chunks.append(chunk)
    if len(chunks) == 1:
        assert got == chunks[0], f"{where}: the shown output differs from what the program prints:\n" + "\n".join(got)
        return
    for chunk in filter(None, chunks):
        found = next((i for i in range(pos, len(got) - len(chunk) + 1) if got[i:i + len(chunk)] == chunk), None)
        assert found is not None, (f"{where}: this shown excerpt is not in the output:\n" + "\n".join(chunk)
                                   + "\n--- output:\n" + "\n".join(got))
        pos = found + len(chunk)


def _rewrite_block(page: Path, marker_argv: list[str], new: str) -> None:
    """--update-docs: replace the fenced block after the marker naming this command with `new`."""
    lines = page.read_text().splitlines()
    for i, line in enumerate(lines):
        m = _MARKER.match(line)
        if m and _argv(m.group(1)) == marker_argv:
            start = next(j for j in range(i + 1, len(lines)) if _FENCE.match(lines[j]))
            end = next(j for j in range(start + 1, len(lines)) if _FENCE.match(lines[j]))
            lines[start + 1:end] = new.rstrip("\n").splitlines()
            page.write_text("\n".join(lines) + "\n")
            return


def _run_page(page: Path, tmp_path, monkeypatch, capsys, slow: bool, update: bool = False) -> int:
    for name in ("examples", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    ran = 0
    for argv, shown in page_steps(page):
        if (_command_name(argv) in SLOW) != slow:
            continue
        code = main(argv)
        out = capsys.readouterr()
        where = f"{page.relative_to(ROOT)}: advise {' '.join(argv)}"
        assert code in (0, 1), f"{where} exited {code}: {out.err[-2000:]}"
        if shown is not None and update and not any(line.strip() == "..." for line in shown):
            _rewrite_block(page, argv, out.out)  # a whole shown output, regenerated on request
        elif shown is not None:
            assert_shown(shown, out.out, where)
        ran += 1
    return ran


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_doc_commands_run_and_outputs_match(page, tmp_path, monkeypatch, capsys, request):
    _run_page(page, tmp_path, monkeypatch, capsys, slow=False, update=request.config.getoption("--update-docs"))


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_slow_doc_commands_run_and_outputs_match(page, tmp_path, monkeypatch, capsys, request):
    _run_page(page, tmp_path, monkeypatch, capsys, slow=True, update=request.config.getoption("--update-docs"))


def test_docs_show_commands_and_outputs():
    steps = [s for p in PAGES for s in page_steps(p)]
    assert len(steps) >= 15 and sum(shown is not None for _, shown in steps) >= 3
    assert {_command_name(a) for a, _ in steps} >= {"plan", "estimate", "facts", "check", "verify", "probe"}


def test_excerpt_check_fails_on_a_changed_output():
    # The check itself: a shown line the program no longer prints must fail.
    actual = "a\nb 1.5 s\nc\nd\n"
    assert_shown(["b 9.0 s", "c", "..."], actual, "ok")
    with pytest.raises(AssertionError, match="not in the output"):
        assert_shown(["...", "c", "e"], actual, "changed")
    with pytest.raises(AssertionError, match="differs"):
        assert_shown(["a", "b 1 s", "c"], actual, "changed")


def test_cli_reference_is_generated_from_click():
    assert (ROOT / "docs" / "reference" / "cli.md").read_text() == cli_reference_markdown(), \
        "regenerate: python -m memfit.cli.reference > docs/reference/cli.md"


def test_every_option_has_help_text():
    ctx = click.Context(cli, info_name="advise")
    missing = [f"advise {name} {p.opts[0]}" for name, cmd in cli.commands.items() for p in cmd.params
               if isinstance(p, click.Option) and not p.help]
    missing += [f"advise {p.opts[0]}" for p in cli.get_params(ctx) if isinstance(p, click.Option) and not p.help]
    assert not missing, f"options without help text: {missing}"


def test_every_exit_code_is_documented():
    sources = "".join(p.read_text() for p in (ROOT / "cli").glob("*.py"))
    codes = {int(c) for c in re.findall(r"SystemExit\((\d+)\)|return (\d+)\b", sources) for c in c if c}
    codes |= {int(c) for c in re.findall(r"exit_code = (\d+)", (ROOT / "engine" / "core" / "errors.py").read_text())}
    codes |= {0}
    assert codes and codes <= set(EXIT_CODES), f"undocumented exit codes: {codes - set(EXIT_CODES)}"
