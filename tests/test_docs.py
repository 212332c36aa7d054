"""The user docs: every ``cfconv`` command in them parses, every relative link resolves,
and the command line stays quiet."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cfconv_tf.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").rglob("*.md")),
    *sorted(ROOT.glob("models/*.md")),
]
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def command_lines(text: str) -> list[str]:
    """``cfconv ...`` lines of the fenced code blocks, continuations joined, comments cut."""
    commands = []
    for block in FENCE.findall(text):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("cfconv "):
                commands.append(line.split(" # ", 1)[0].strip())
    return commands


def documented_commands() -> list[tuple[str, str]]:
    return [
        (path.relative_to(ROOT).as_posix(), command)
        for path in DOCS
        for command in command_lines(path.read_text())
    ]


@pytest.mark.parametrize(("doc", "command"), documented_commands())
def test_every_documented_command_parses(doc, command):
    arguments = shlex.split(command)[1:]
    try:
        build_parser().parse_args(arguments)
    except SystemExit as exit:
        pytest.fail(f"{doc}: `{command}` does not parse (exit {exit.code})")


def test_the_docs_document_commands():
    docs = {doc for doc, _ in documented_commands()}
    assert {"README.md", "docs/export.md"} <= docs


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(path):
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        resolved = (path.parent / target.split("#", 1)[0]).resolve()
        assert resolved.exists(), f"{path.name}: link to {target} goes nowhere"


def test_the_command_line_is_quiet_unless_asked(tmp_path):
    """No TensorFlow C++ log line (``I0000 ...``, ``E0000 ... cuInit``) on a healthy run;
    ``--verbose`` shows them."""
    environment = {
        key: value
        for key, value in __import__("os").environ.items()
        if key != "TF_CPP_MIN_LOG_LEVEL"
    }
    command = [sys.executable, "-m", "cfconv_tf.cli", "summary", "--config", "paper_cnn"]
    quiet = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert "non-trainable entries" in quiet.stdout
    native = re.compile(r"^[IWE]\d{4} |absl::InitializeLog", re.M)
    assert not native.search(quiet.stderr), quiet.stderr
    verbose = subprocess.run(
        [*command[:3], "--verbose", *command[3:]],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert verbose.returncode == 0 and native.search(verbose.stderr), verbose.stderr
