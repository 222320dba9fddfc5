"""The README and docs/ as a newcomer uses them: the README stays one screen of front door, every link leads to a file
(and heading) of the repo, and every command they show names a real subcommand, flag, make target and file; the
cheap ones run as written."""
from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from spp_cls.cli import main
from spp_cls.train.lightning_cli import build_cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
COMMAND_WORDS = ("spp-cls", "make", "sbatch", "python", "python3", "jobs/", "source", "export", "wandb")
FLAG = re.compile(r"(?<![\w-])--[a-zA-Z][\w.-]*")
REPO_PATH = re.compile(r"(?<![\w/.-])(?:configs|jobs|docs|benchmarks|tests|spp_cls)/[\w./-]*\w")
ENV_ASSIGNMENT = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=(?:\"[^\"]*\"|\S*)\s+)+")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


def _commands(page: Path) -> Iterator[str]:
    """Command lines of a page: lines of its code blocks that start with a command (a `$ ` prompt dropped, and
    environment assignments), and inline code that starts with `spp-cls `."""
    in_block = False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            command = ENV_ASSIGNMENT.sub("", line.strip().removeprefix("$ "))
            if command.startswith(COMMAND_WORDS):
                yield command
        else:
            yield from (span for span in re.findall(r"`([^`]+)`", line) if span.startswith("spp-cls "))


def _without_comment(command: str) -> str:
    return re.split(r"\s#\s", f" {command} ", maxsplit=1)[0].strip()


@cache
def _help(*words: str) -> str:
    """What `spp-cls WORDS --help` prints (each subcommand's own parser, in this process)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed), contextlib.suppress(SystemExit):
        _spp_cls([*words, "--help"])
    return printed.getvalue()


def _spp_cls(argv: list[str]) -> int:
    """`spp-cls ARGV` in this process; fit/validate/test through the CLI's parser without `spp-cls`'s set-up of
    wandb's process-wide settings, which would outlive this test."""
    if argv[0] in ("fit", "validate", "test"):
        build_cli(argv)
        return 0
    return main(argv)


def _spp_cls_parts(command: str) -> Iterator[tuple[tuple[str, ...], list[str]]]:
    """(subcommand words, flags) of each `spp-cls ...` in a command; `fit|validate|test` stands for each of them."""
    for segment in re.findall(r"spp-cls\s+([^&;]*)", command):
        words = segment.split()
        if not words:
            continue
        names = words[0].split("|")
        sub = ("windows",) if len(words) > 1 and words[1] == "windows" else ()
        for name in names:
            yield (name, *sub), FLAG.findall(segment)


def test_the_readme_is_one_screen_of_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) < 200
    first_screen = "\n".join(lines[:60])
    for must in ("make demo", "make test", "spp-cls shards", "spp-cls fit", "spp-cls test", "spp-cls table",
                 "source .venv/bin/activate"):
        assert must in first_screen, must


def test_every_link_leads_to_a_file_and_heading_of_the_repo():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.is_file() and ROOT in linked.parents, f"{page.name}: {target}"
            if anchor:
                assert anchor in _anchors(linked), f"{page.name}: {target}"


def test_every_command_names_a_real_subcommand_flag_make_target_and_file():
    make_targets = set(re.findall(r"(?m)^([\w-]+):", (ROOT / "Makefile").read_text()))
    subcommands = {"fit", "validate", "test", "shards", "table", "dashboard", "models", "demo", "bench", "predict",
                   "run-dir"}
    checked = 0
    for page in PAGES:
        for command in _commands(page):
            command = _without_comment(command)
            for path in REPO_PATH.findall(command):
                if not re.search(r"[<{*]|runs/", path):
                    assert (ROOT / path).exists(), f"{page.name}: {command}: no {path}"
            for target in re.findall(r"(?:^|&&\s*)make\s+([\w-]+)", command):
                assert target in make_targets, f"{page.name}: {command}"
            for words, flags in _spp_cls_parts(command):
                assert words[0] in subcommands, f"{page.name}: {command}"
                known = set(FLAG.findall(_help(*words))) if flags else set()
                assert set(flags) <= known, f"{page.name}: {command}: {sorted(set(flags) - known)}"
            for script in re.findall(r"python3? (benchmarks/\S+\.py)", command):
                flags = FLAG.findall(command)
                usage = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                                       timeout=120, check=False, cwd=ROOT).stdout
                assert set(flags) <= set(FLAG.findall(usage)), f"{page.name}: {command}"
            checked += 1
    assert checked > 40


def test_the_readme_commands_that_cost_nothing_run_as_written(capsys):
    """`spp-cls models`, and each `fit`/`test` line of the README parsed up to the resolved config."""
    ran = 0
    for command in _commands(README):
        words = shlex.split(_without_comment(command))
        if words[:2] == ["spp-cls", "models"]:
            assert main(words[1:]) == 0
            assert "zf5_spp" in capsys.readouterr().out
            ran += 1
        elif words[0] == "spp-cls" and words[1] in ("fit", "test") and not re.search(r"[A-Z]{3}", command):
            with pytest.raises(SystemExit) as exit_:
                _spp_cls([*words[1:], "--print_config"])
            assert exit_.value.code in (0, None), command
            assert "backbone: zf5" in capsys.readouterr().out
            ran += 1
    assert ran >= 3
