"""pyproject.toml, constraints.txt, the README and CI agree on what is installed and tested."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    exact = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {canonicalize_name(r.name): next(iter(r.specifier)).version for r in exact}


def dependencies() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(d) for d in project["dependencies"] + project["optional-dependencies"]["test"]]


def test_every_dependency_is_pinned_in_constraints_within_its_range():
    pinned = pins()
    for requirement in dependencies():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (name, pinned[name], requirement)


def test_transformers_range_is_closed_above_and_bounded_below():
    (transformers,) = [r for r in dependencies() if r.name == "transformers"]
    operators = {spec.operator for spec in transformers.specifier}
    assert operators == {">=", "<"}, "an open upper bound admits releases the suite never ran on"


def test_the_readme_commands_and_ci_install_the_tested_set():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^python3 -m venv .*$", readme, flags=re.M)
    assert len(commands) == 2 and all("-c constraints.txt" in command for command in commands)
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = commands[1].split(" && ")
    for step in test_command[2:]:  # after venv creation and activation
        assert step in ci, f"CI does not run the README's step {step!r}"
