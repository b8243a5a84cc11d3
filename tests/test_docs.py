"""The user's guides (README.md and docs/*.md) name only commands, flags and presets that exist, and
nothing the project ships points outside the repository."""

import argparse
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Flags of other programs the guides show beside isnet's (pip, docker, the AWS CLI).
FOREIGN_FLAGS = {"--index-url", "--build-arg", "--rm", "--no-deps", "--model-name", "--execution-role-arn",
                 "--primary-container", "--endpoint-config-name", "--production-variants", "--endpoint-name"}
# Backticked words shaped like a build preset that name something else.
NOT_PRESETS = {"int8", "fp16", "fp32", "bf16"}


def _commands() -> dict[str, argparse.ArgumentParser]:
    from isnet.tools.cli import build_parser

    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def _code(text: str) -> tuple[list[str], list[str]]:
    """(shell lines of the fenced blocks, continuations joined; inline code spans) of a guide."""
    blocks = re.findall(r"```(?:sh|bash)?\n(.*?)```", text, flags=re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return lines, re.findall(r"`([^`\n]+)`", prose)


def _invocations(snippet: str) -> list[tuple[str, list[str]]]:
    """Each ``isnet COMMAND ...`` in a line of shell, with the flags given to it (comments dropped)."""
    snippet = snippet.split(" #")[0]
    found = []
    for part in re.split(r"&&|\||;|\$\(", snippet):
        match = re.search(r"(?:^|\s)isnet\s+([a-z][\w-]*)(.*)", part)
        if match:
            found.append((match.group(1), re.findall(r"(?<![\w-])(--[a-z][\w-]*)", match.group(2))))
    return found


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_every_command_and_flag_a_guide_shows_exists(guide):
    commands = _commands()
    every_flag = set().union(*(_flags(p) for p in commands.values())) | FOREIGN_FLAGS
    lines, spans = _code(guide.read_text())
    wrong = []
    for snippet in lines + spans:
        for command, flags in _invocations(snippet):
            if command not in commands:
                wrong.append(f"isnet {command}: no such command ({snippet.strip()})")
                continue
            wrong += [f"isnet {command} {flag}: no such flag" for flag in flags
                      if flag not in _flags(commands[command])]
    for span in spans:  # a flag named in prose belongs to some command
        wrong += [f"{flag}: no command has it" for flag in re.findall(r"^(--[a-z][\w-]*)", span)
                  if flag not in every_flag]
    assert not wrong, "\n".join(wrong)


def test_the_guides_show_the_command_table_and_every_preset():
    text = "\n".join(guide.read_text() for guide in GUIDES)
    from isnet.build_in.ops import PRESETS as PREPROCESS_PRESETS
    from isnet.tools.compare.experiment import PRESETS

    table = (ROOT / "README.md").read_text().split("## Commands")[1].split("\n## ")[0]
    listed = set(re.findall(r"`(?:isnet )?([a-z][\w-]*)`", table))
    assert set(_commands()) <= listed, f"missing from README's command table: {set(_commands()) - listed}"
    spans = set(re.findall(r"`([^`\n]+)`", text))
    assert set(PRESETS) <= spans, f"presets the guides never name: {set(PRESETS) - spans}"
    shaped = {span for span in spans if re.fullmatch(r"(ov_)?(int8|fp16|fp32|bf16)(_[a-z0-9]+)*", span)}
    assert shaped - NOT_PRESETS <= set(PRESETS), f"not presets: {shaped - NOT_PRESETS - set(PRESETS)}"
    named = set(re.findall(r"(?:process_ops: |--preprocess )`?([a-z][\w-]*)", text))
    named |= {span for span in spans if re.fullmatch(r"(isnet|u2net)-?\d*", span) and "-" in span or span == "u2net"}
    assert named - {"isnet"} <= set(PREPROCESS_PRESETS), f"not pre-processing presets: {named - set(PREPROCESS_PRESETS)}"


def test_nothing_shipped_points_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode:
        pytest.skip("not a git checkout")
    allowed = ("tests/", "bench/", ".ci/", "Makefile")
    pointing = [name for name in tracked.stdout.splitlines() if not name.startswith(allowed)
                and (ROOT / name).is_file() and "../shared" in (ROOT / name).read_text(errors="ignore")]
    assert not pointing, f"files outside tests/, bench/, .ci/ and the Makefile naming ../shared: {pointing}"
