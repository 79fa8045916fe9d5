"""The docs keep up with the code: every hook documented with its arguments, CI runs the README's command."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from gateway import hookspecs

ROOT = Path(__file__).resolve().parent.parent
HOOKS = [
    (name, function)
    for name, function in vars(hookspecs).items()
    if inspect.isfunction(function) and hasattr(function, "gateway_spec")
]


@pytest.mark.parametrize(("name", "function"), HOOKS, ids=[name for name, _ in HOOKS])
def test_every_hook_is_documented_with_its_signature(name, function):
    docs = (ROOT / "docs" / "plugins.md").read_text()
    arguments = ", ".join(inspect.signature(function).parameters)
    prefix = "async " if inspect.iscoroutinefunction(function) else ""
    assert f"`{prefix}{name}({arguments})`" in docs


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    test_command = next(line for block in blocks for line in block.splitlines() if "pytest" in line)
    assert test_command in (ROOT / ".ci" / "run").read_text()
