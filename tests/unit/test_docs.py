"""The README and docker-compose.yml stay true to the code."""

from __future__ import annotations

import os
import re
from pathlib import Path

from meterstream.core.config import SECRET_VARIABLES, VARIABLES
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
    known = {v.name for v in VARIABLES} | {f"{name}_FILE" for name in SECRET_VARIABLES}
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


def _compose_blocks() -> dict[str, str]:
    """docker-compose.yml's top-level anchor and each service, as text blocks."""
    compose = (REPO / "docker-compose.yml").read_text()
    blocks: dict[str, str] = {}
    section = name = None
    for line in compose.splitlines():
        top = re.match(r"^([\w-]+):", line)
        service = re.match(r"^  ([\w-]+):\s*$", line)
        if top:
            section = name = top.group(1)
        elif section == "services" and service:
            name = f"services.{service.group(1)}"
        if name is not None:
            blocks[name] = blocks.get(name, "") + line + "\n"
    return blocks


def _published(block: str) -> list[str]:
    match = re.search(r"^ {4}ports:\n((?: {6}- .*\n)+)", block, re.M)
    return re.findall(r'- "?([^"\n]+)"?', match.group(1)) if match else []


def test_compose_publishes_only_the_receiver() -> None:
    blocks = _compose_blocks()
    services = {name.split(".", 1)[1]: text for name, text in blocks.items()
                if name.startswith("services.")}
    assert {"receiver", "worker", "sink", "clickhouse", "kafka", "secrets"} <= set(services)
    assert _published(services["receiver"]) == ["8686:8686"]
    for name, text in services.items():
        if name != "receiver":
            assert "ports:" not in text, f"{name} publishes a port"
    assert "ports:" not in blocks["x-meterstream"]


def test_compose_writes_no_credential_and_reads_generated_ones() -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    assert not re.search(r"PASSWORD:\s*\S", compose)
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", compose), "a URL with a password"
    for name in ("METERSTREAM_ADMIN_TOKEN", "METERSTREAM_SECRET_KEY", "METERSTREAM_CLICKHOUSE"):
        assert not re.search(rf"\b{name}:", compose), f"{name} given in clear"
        assert re.search(rf"\b{name}_FILE: /run/meterstream-secrets/[\w-]+\n", compose)
    generator = (REPO / "deploy" / "compose-secrets.sh").read_text()
    for path in re.findall(r"_FILE: /run/meterstream-secrets/([\w-]+)", compose):
        assert f'"$dir/{path}"' in generator
    services = _compose_blocks()
    assert "meterstream-compose-secrets" in services["services.secrets"]
    assert "service_completed_successfully" in services["x-meterstream"]
    assert "service_completed_successfully" in services["services.clickhouse"]


def test_compose_secrets_are_generated_once_and_private(tmp_path: Path) -> None:
    import base64
    import stat
    import subprocess

    from meterstream.core.config import Settings

    secrets = tmp_path / "secrets"
    secrets.mkdir()
    script = REPO / "deploy" / "compose-secrets.sh"
    env = {**os.environ, "METERSTREAM_UID": str(os.getuid())}
    subprocess.run(["sh", str(script), str(secrets)], env=env, check=True,
                   capture_output=True)
    first = {path.name: path.read_text() for path in secrets.iterdir()}
    assert set(first) == {"clickhouse-password", "clickhouse-url", "admin-token", "secret-key"}
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    for path in secrets.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(base64.b64decode(first["secret-key"].strip())) == 32
    assert len(first["admin-token"]) >= 32
    subprocess.run(["sh", str(script), str(secrets)], env=env, check=True,
                   capture_output=True)
    assert {path.name: path.read_text() for path in secrets.iterdir()} == first
    settings = Settings.from_env({
        "METERSTREAM_CLICKHOUSE_FILE": str(secrets / "clickhouse-url"),
        "METERSTREAM_INSECURE_HTTP_HOSTS": "clickhouse",
        "METERSTREAM_ADMIN_TOKEN_FILE": str(secrets / "admin-token"),
        "METERSTREAM_SECRET_KEY_FILE": str(secrets / "secret-key")})
    assert settings.clickhouse.url == (
        f"http://meterstream:{first['clickhouse-password']}@clickhouse:8123/meterstream")
    assert settings.admin_token == first["admin-token"]


def test_the_image_runs_as_a_non_root_user_owning_its_data() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    data_dir = re.search(r"METERSTREAM_DATA_DIR=(\S+)", dockerfile)
    assert data_dir is not None
    assert re.search(rf"chown [^\n]*meterstream[^\n]* {re.escape(data_dir.group(1))}\b",
                     dockerfile)
    # Nothing after USER switches back.
    assert dockerfile.rindex("USER ") > dockerfile.rindex("RUN ")
