"""The README stays a user's page: short, its two commands true (CI runs the same), every
command and option it shows accepted by the CLI, every link and Python snippet valid, and
no machine paths in it or in docs/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from twinrank.cli import app

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
MAX_LINES = 250
DEMO = "bash .ci/setup && .venv/bin/twinrank demo"
TESTS = "bash .ci/setup && .venv/bin/python -m pytest"
MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:work|tmp|root|home/\w+)/")


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def shown_commands() -> list[tuple[str, list[str]]]:
    """(subcommand, its --options) for every `twinrank SUBCOMMAND ...` the README shows."""
    code = "\n".join(code_blocks("bash")).replace("\\\n", " ")
    code += "\n" + "\n".join(re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", README,
                                                                flags=re.S)))
    found = []
    for match in re.finditer(r"twinrank ([a-z][a-z-]*)([^\n]*)", code):
        options = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", match.group(2))
        found.append((match.group(1), options))
    return found


def test_readme_is_short():
    assert len(README.splitlines()) <= MAX_LINES


def test_the_two_commands_are_the_ones_ci_runs():
    assert DEMO in README and TESTS in README
    ci = (ROOT / ".ci" / "run").read_text()
    # the README's two steps, in order, the test command exactly as written (CI checks
    # style and types between them: a failure there stops it before the tests)
    setup, tests = TESTS.split(" && ")
    steps = [line.strip() for line in ci.splitlines() if line.strip()
             and not line.lstrip().startswith("#")]
    assert setup in steps and tests in steps, ci
    assert steps.index(setup) < steps.index(tests)


def test_every_command_and_option_shown_is_accepted():
    runner = CliRunner()
    commands = shown_commands()
    assert {name for name, _ in commands} >= {"ingest", "search", "ui", "demo", "train"}
    helps: dict[str, str] = {}
    for name, options in commands:
        if name not in helps:
            result = runner.invoke(app, [name, "--help"], env={"COLUMNS": "300"})
            assert result.exit_code == 0, f"`twinrank {name} --help` failed: {result.output}"
            helps[name] = result.output
        for option in options:
            if option != "--help":
                assert option in helps[name], f"`twinrank {name}` has no {option}"


def test_python_snippets_parse_and_links_resolve():
    for block in code_blocks("python"):
        ast.parse(block)
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), f"README links to missing {target}"


@pytest.mark.parametrize("path", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
                                  *sorted((ROOT / "bench" / "results").glob("*.json")),
                                  *sorted((ROOT / "models" / "demo").glob("*.json"))],
                         ids=lambda p: p.name)
def test_no_machine_paths(path):
    hits = MACHINE_PATH.findall(path.read_text())
    assert not hits, f"{path.name} names machine paths: {hits[:3]}"
