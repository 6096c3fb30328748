"""The README and docker-compose.yml stay true to the code."""

from __future__ import annotations

import os
import re

from meterstream.config import VARIABLES
from tests.support import REPO


def test_readme_configuration_table_lists_every_variable_with_its_default() -> None:
    readme = (REPO / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(METERSTREAM_[A-Z_]+)` \| `([^`]*)` \|", readme, re.M))
    assert rows == {v.name: v.default for v in VARIABLES}


def test_readme_commands_exist() -> None:
    readme = (REPO / "README.md").read_text()
    for script in ("deploy/up.sh", "deploy/test.sh"):
        assert f"```sh\n{script}\n```" in readme
        assert os.access(REPO / script, os.X_OK)


def test_compose_uses_only_known_variables() -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    known = {v.name for v in VARIABLES}
    used = set(re.findall(r"\b(METERSTREAM_[A-Z_]+):", compose))
    assert used
    assert used <= known


def test_the_image_copies_every_package_the_project_installs() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {pattern.rstrip("*")
                for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set(re.findall(r"^COPY (\w+) \1$", (REPO / "Dockerfile").read_text(), re.M))
    assert packages == copied
