"""The documentation runs: README.md and docs/*.md are checked against the code they describe.

- every ```python block runs (the blocks of one page in order, in one namespace,
  from a folder that has ``sample_data/``), the one training example with a
  budget of two steps instead of 60 s;
- every ``seglab CMD --option`` in a ```bash or ```console block, or in inline
  code, names an option the real parser accepts; a complete command line is
  parsed whole (nothing runs);
- every ``make TARGET`` names a target of the Makefile;
- docs/cli.md is what scripts/make_cli_docs.py renders from the parsers;
- a block that is not meant to run says so: every fence names its language,
  one of those below.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import re
import shlex
from pathlib import Path

import pytest

from napari_seglab.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python", "bash", "console", "text"}
#: the training example's budget, and the test's: two steps of a small network
BUDGET = "time_limit=60, epochs=None"
SHORT_BUDGET = ("time_limit=None, epochs=1, steps_per_epoch=2, encoder='resnet18', patch=64, threads=1, "
                "bf16='off', scale=1.0")  # no thread or bfloat16 trials, no resampling: seconds, not a minute
FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ ]*$", re.M | re.S)


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def blocks(page: Path, lang: str | None = None) -> list[tuple[str, str, int]]:
    """The fenced blocks of ``page`` as (language, code, line number), indentation removed."""
    text = page.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        indent = len(m["indent"])
        code = "".join(line[indent:] for line in m["body"].splitlines(keepends=True))
        if lang is None or m["lang"] == lang:
            found.append((m["lang"], code, text.count("\n", 0, m.start()) + 1))
    return found


def prose(page: Path) -> str:
    """``page`` without its fenced blocks."""
    return FENCE.sub("", page.read_text(encoding="utf-8"))


def _cli_docs_module():
    spec = importlib.util.spec_from_file_location("make_cli_docs", ROOT / "scripts" / "make_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pages_exist_and_every_block_names_its_language():
    assert len(PAGES) > 5, PAGES
    for page in PAGES:
        for lang, _, line in blocks(page):
            assert lang in LANGUAGES, (f"{_name(page)}:{line}: a fence must name one of {sorted(LANGUAGES)} "
                                       f"(text or console for a block that is not meant to run), not {lang!r}")


# ----------------------------------------------------------------------------- python


def _pages_with_python() -> list[Path]:
    return [page for page in PAGES if blocks(page, "python")]


@pytest.mark.parametrize("page", _pages_with_python(), ids=_name)
def test_the_python_blocks_run(page, tmp_path, monkeypatch):
    code = [(src, line) for _, src, line in blocks(page, "python")]
    (tmp_path / "sample_data").symlink_to(ROOT / "sample_data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    printed = io.StringIO()
    namespace: dict = {"__name__": "__docs__"}
    with contextlib.redirect_stdout(printed):
        for src, line in code:
            src = src.replace(BUDGET, SHORT_BUDGET)
            # line numbers in a traceback point into the page
            exec(compile("\n" * line + src, str(page), "exec"), namespace)  # noqa: S102 - our own docs
    if page.name == "python.md":  # the training example: it trained, saved, printed progress and predicted
        assert (tmp_path / "m.pt").is_file()
        assert namespace["prediction"].labels.shape == (256, 512)
        assert "TrainStep" in printed.getvalue() and "val_dice" in printed.getvalue()
        assert namespace["summary"].ok == namespace["summary"].total == 1, (tmp_path / "results" / "manifest.csv"
                                                                             ).read_text(encoding="utf-8")


def test_the_training_example_has_the_budget_the_test_shortens():
    training = [src for page in PAGES for _, src, _ in blocks(page, "python") if "train(" in src]
    assert training, "no Python training example left in the docs"
    assert all(BUDGET in src for src in training), f"every training example must train with {BUDGET!r}"


# ----------------------------------------------------------------------------- seglab options


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(dict(a.choices) for a in parser._actions if isinstance(a, argparse._SubParsersAction))


SUBPARSERS = _subparsers(build_parser())


def _options(sub: argparse.ArgumentParser) -> set[str]:
    return {flag for action in sub._actions for flag in action.option_strings}


def shell_commands(page: Path) -> list[tuple[str, int]]:
    """Command lines of the page's bash and console blocks (continuations joined; console: ``$`` lines)."""
    commands = []
    for lang, code, start in blocks(page):
        if lang not in ("bash", "console"):
            continue
        lines, pending, first = code.splitlines(), "", 0
        for i, line in enumerate(lines):
            if lang == "console" and not pending:
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            if not pending:
                first = start + 1 + i
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            commands.append((pending + line, first))
            pending = ""
    return commands


def _seglab_args(command: str) -> list[str] | None:
    """The arguments after ``seglab`` in a shell command line (None when it runs no seglab)."""
    words = shlex.split(command, comments=True)
    for i, word in enumerate(words):
        if word == "seglab" or word.endswith("/seglab"):
            return words[i + 1:]
    return None


def _check_names(args: list[str], where: str) -> None:
    """Every ``--option`` of a sketched command line (``[...]``, ``A|B``, ``...``) is the command's."""
    command = args[0]
    assert command in SUBPARSERS, f"{where}: seglab has no command {command!r}"
    known = _options(SUBPARSERS[command])
    for word in args[1:]:
        for part in re.split(r"[\[\]|]", word):
            flag = part.split("=")[0]
            if flag.startswith("--"):
                assert flag in known, f"{where}: seglab {command} has no option {flag} (it has {sorted(known)})"


def _parse_whole(args: list[str], where: str) -> None:
    """A complete command line parses with the real parser (errors come back with argparse's words)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            build_parser().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"{where}: seglab {' '.join(args)}: {err.getvalue().strip() or exc}")


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_seglab_commands_in_shell_blocks_parse(page):
    for command, line in shell_commands(page):
        args = _seglab_args(command)
        if not args:
            continue
        where = f"{_name(page)}:{line}"
        _check_names(args, where)
        sketch = "..." in args or any(w.startswith("[") or "|" in w for w in args)
        if not sketch:
            _parse_whole(args, where)


INLINE_SEGLAB = re.compile(r"`seglab\s+([a-z]+)([^`]*)`")


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_seglab_options_in_inline_code_exist(page):
    for m in INLINE_SEGLAB.finditer(prose(page)):
        _check_names([m[1], *m[2].split()], f"{_name(page)}: `seglab {m[1]}{m[2]}`")


#: options the docs name in inline code that belong to another program: the file that defines them
OTHER_OPTIONS = {"--protocols": "benchmarks/quality_vs_time.py", "--check": "scripts/make_cli_docs.py",
                 "--sparse": "benchmarks/quality_3d.py", "--budget": "benchmarks/quality_3d.py",
                 "--sections": "benchmarks/quality_3d.py",
                 "--strict": "Makefile",  # mkdocs build --strict, as the Makefile runs it
                 "--durations": "Makefile"}  # pytest's, as make test passes it


def test_options_in_inline_code_exist():
    """An inline ``--option`` on its own (``--tta``) is an option of some seglab command (or a named tool's)."""
    accepted = set().union(*(_options(sub) for sub in SUBPARSERS.values()))
    for page in PAGES:
        for flag in re.findall(r"`(--[a-z][\w-]*)", prose(page)):
            if flag in OTHER_OPTIONS:
                assert flag in (ROOT / OTHER_OPTIONS[flag]).read_text(encoding="utf-8"), (flag, OTHER_OPTIONS[flag])
            else:
                assert flag in accepted, f"{_name(page)}: no seglab command has the option {flag}"


def test_make_targets_named_in_the_docs_exist():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    for page in PAGES:
        named = re.findall(r"`make ([a-z][\w-]*)", prose(page))  # inline code
        for command, _ in shell_commands(page):
            words = shlex.split(command, comments=True)
            if words[:1] == ["make"]:
                named += [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        assert named or page.name != "README.md", "the README names no make target"
        for target in named:
            assert target in targets, f"{_name(page)}: `make {target}` is not a Makefile target"


def test_the_option_check_catches_a_wrong_option(tmp_path):
    """The checks above can fail: a made-up option and a command missing a required option."""
    with pytest.raises(AssertionError, match="no option --no-such-option"):
        _check_names(["predict", "--no-such-option"], "here")
    with pytest.raises(pytest.fail.Exception, match="--model"):
        _parse_whole(["predict", "--input", "x.tif"], "here")
    page = tmp_path / "p.md"
    page.write_text("```console\n$ seglab batch --model m.pt \\\n    --input-dir a --output-dir b\nok\n```\n")
    [(command, line)] = shell_commands(page)
    assert line == 2
    assert shlex.split(command) == shlex.split("seglab batch --model m.pt --input-dir a --output-dir b")


# ----------------------------------------------------------------------------- generated and linked pages


def test_the_command_line_page_is_current():
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert _cli_docs_module().updated(page) == page, (
        "docs/cli.md is out of date: run python scripts/make_cli_docs.py")


def test_readme_links_to_files_that_exist():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local, "the README links to no docs page"
    for link in local:
        assert (ROOT / link).exists(), f"README.md links to {link}, which does not exist"
