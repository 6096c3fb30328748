"""The README, docs/ and docker-compose.yml stay true to the code."""

from __future__ import annotations

import os
import re
from pathlib import Path

from meterstream.core.config import SECRET_VARIABLES, VARIABLES
from tests.support import REPO

README_MAX_LINES = 200


def _pages() -> dict[Path, str]:
    """README.md, BENCHMARKS.md and every page of docs/, by path."""
    paths = [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*.md"))]
    return {path: path.read_text() for path in paths}


def test_configuration_table_lists_every_variable_with_its_default_and_meaning() -> None:
    page = (REPO / "docs" / "configuration.md").read_text()
    rows = {name: (default, meaning.replace("\\|", "|"))
            for name, default, meaning in re.findall(
                r"^\| `(METERSTREAM_[A-Z_]+)` \| `([^`]*)` \| (.*) \|$", page, re.M)}
    assert rows == {v.name: (v.default.replace("\\|", "|"), v.help) for v in VARIABLES}, (
        "run .venv/bin/python deploy/readme_config_table.py")


def test_readme_commands_exist() -> None:
    readme = (REPO / "README.md").read_text()
    for script in ("deploy/up.sh", "deploy/test.sh"):
        assert f"```sh\n{script}\n```" in readme
        assert os.access(REPO / script, os.X_OK)


def test_readme_is_short_and_links_every_page_of_docs() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    pages = sorted(path.name for path in (REPO / "docs").glob("*.md"))
    assert pages
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)(?:#[\w-]*)?\)", readme))
    assert [page for page in pages if page not in linked] == []


def test_readme_commands_table_names_every_subcommand() -> None:
    import argparse

    from meterstream.cli import _parser

    readme = (REPO / "README.md").read_text()
    (commands,) = [action for action in _parser()._actions
                   if isinstance(action, argparse._SubParsersAction)]
    documented = set(re.findall(r"^\| `meterstream ([a-z-]+)", readme, re.M))
    assert documented == set(commands.choices)


# --- Paths and links -------------------------------------------------------------------

FENCE = re.compile(r"^```[^\n]*\n.*?^```$", re.M | re.S)
# A word of a code span or block that may name a file: what a path or a dotted module is made of.
WORD = re.compile(r"[A-Za-z0-9_.][\w./-]*")
# A path that names a file by its extension is checked even when its top folder is unknown,
# so that a made-up folder is caught too.
FILE = re.compile(r"^[a-z_][\w-]*(/[\w.-]+)+\.(py|sh|md|sql|toml|yml|yaml|json|txt|xml)$")
PACKAGES = ("meterstream", "ingest", "processors", "sinks", "billing", "bench", "tests")
MODULE = re.compile(rf"^(?:{'|'.join(PACKAGES)})(?:\.\w+)+$")


def _top_level(root: Path) -> set[str]:
    """Top-level names of the repository: hidden ones (.venv, .meterstream) are local state,
    not the project's, except .ci."""
    return {path.name for path in root.iterdir()
            if not path.name.startswith(".") or path.name == ".ci"}


def _code_words(text: str) -> list[str]:
    """The words of every code block and every inline code span of a Markdown text."""
    blocks = [match.group(0) for match in FENCE.finditer(text)]
    spans = re.findall(r"`([^`]+)`", FENCE.sub("", text))  # a span may wrap a line
    return [word.rstrip(".") for code in (*blocks, *spans) for word in WORD.findall(code)]


def _module_exists(root: Path, dotted: str) -> bool:
    """Whether `pkg.module[.name]` names a module of the repository (and, after the module,
    a name that its source defines or imports)."""
    parts = dotted.split(".")
    for end in range(len(parts), 1, -1):
        base = root.joinpath(*parts[:end])
        source = base.with_suffix(".py") if base.with_suffix(".py").is_file() else (
            base / "__init__.py")
        if source.is_file():
            rest = parts[end:]
            return not rest or bool(re.search(rf"\b{re.escape(rest[0])}\b", source.read_text()))
    return False


def missing_paths(text: str, root: Path = REPO) -> list[str]:
    """Repository paths and modules named as code in `text` that do not exist under `root`."""
    top = _top_level(root)
    missing = []
    for word in _code_words(text):
        if MODULE.match(word):
            if not _module_exists(root, word):
                missing.append(word)
        elif ("/" in word and (word.split("/")[0] in top or FILE.match(word))
              and not (root / word).exists()):
            missing.append(word)
    return sorted(set(missing))


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    anchors: set[str] = set()
    for heading in re.findall(r"^#+ (.*)$", FENCE.sub("", text), re.M):
        slug = _slug(heading)
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def broken_links(text: str, page: Path) -> list[str]:
    """Relative links (and their #anchors) of `text`, the content of `page`, that lead
    nowhere."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", text)):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and linked.suffix == ".md"
                                   and anchor not in _anchors(linked.read_text())):
            broken.append(target)
    return broken


def test_every_path_and_module_named_in_the_docs_exists() -> None:
    found = {path.name: missing_paths(text) for path, text in _pages().items()}
    assert {name: paths for name, paths in found.items() if paths} == {}


def test_every_relative_link_of_the_docs_leads_somewhere() -> None:
    found = {path.name: broken_links(text, path) for path, text in _pages().items()}
    assert {name: links for name, links in found.items() if links} == {}


def test_the_checks_find_a_made_up_path_module_and_link() -> None:
    text = """Run `deploy/up.sh`, then `deploy/upp.sh` and `scripts/made_up.py`; see
`processors.split` and `processors.splitter`, `processors.split.no_such_name`.

```sh
.venv/bin/python bench/no_such_bench.py
```

[ok](docs/layout.md), [gone](docs/no-such-page.md), [anchor](docs/layout.md#no-such-heading),
[web](https://example.com/x.md)
"""
    assert missing_paths(text) == ["bench/no_such_bench.py", "deploy/upp.sh",
                                   "processors.split.no_such_name", "processors.splitter",
                                   "scripts/made_up.py"]
    assert broken_links(text, REPO / "README.md") == ["docs/no-such-page.md",
                                                      "docs/layout.md#no-such-heading"]


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


def test_compose_publishes_only_the_receiver_and_the_console_on_loopback() -> None:
    blocks = _compose_blocks()
    services = {name.split(".", 1)[1]: text for name, text in blocks.items()
                if name.startswith("services.")}
    assert {"receiver", "worker", "sink", "clickhouse", "kafka", "secrets"} <= set(services)
    assert _published(services["receiver"]) == ["8686:8686"]
    # The console is for people on the host: its loopback only, behind the tokens.
    assert _published(services["console"]) == ["127.0.0.1:8690:8690"]
    for name, text in services.items():
        if 'profiles: ["observability"]' in text:
            # Prometheus and Grafana, on the host's loopback only (docs/observability.md).
            published = _published(text)
            assert published
            assert all(p.startswith("127.0.0.1:") for p in published), f"{name}: {published}"
        elif name not in ("receiver", "console"):
            assert "ports:" not in text, f"{name} publishes a port"
    assert "ports:" not in blocks["x-meterstream"]


def test_compose_keeps_the_worker_api_inside_with_a_read_token_only() -> None:
    services = _compose_blocks()
    worker = services["services.worker"]
    port = re.search(r'METERSTREAM_WORKER_PORT: "(\d+)"', services["x-meterstream"])
    assert port is not None
    # Not published: neither by the worker nor by any other service for it.
    published = [p for text in services.values() for p in _published(text)]
    assert not [p for p in published if p.split(":")[-1] == port.group(1)]
    # Its API is on (a token) and opens with the read token alone: whoever reads usage
    # does not get the registry's admin API with it.
    assert "METERSTREAM_READ_TOKEN_FILE: /run/meterstream-secrets/read-token" in worker
    assert "METERSTREAM_ADMIN_TOKEN" not in worker
    # No METERSTREAM_METRICS_HOST: the probes stay on the (unpublished) service ports.
    assert "METERSTREAM_METRICS_HOST" not in "".join(services.values())


def test_compose_writes_no_credential_and_reads_generated_ones() -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    assert not re.search(r"PASSWORD:\s*\S", compose)
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", compose), "a URL with a password"
    for name in ("METERSTREAM_ADMIN_TOKEN", "METERSTREAM_READ_TOKEN", "METERSTREAM_SECRET_KEY",
                 "METERSTREAM_CLICKHOUSE"):
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
    assert set(first) == {"clickhouse-password", "clickhouse-url", "admin-token", "read-token",
                          "secret-key"}
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    for path in secrets.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(base64.b64decode(first["secret-key"].strip())) == 32
    assert len(first["admin-token"]) >= 32
    assert len(first["read-token"]) >= 32
    assert first["read-token"] != first["admin-token"]
    subprocess.run(["sh", str(script), str(secrets)], env=env, check=True,
                   capture_output=True)
    assert {path.name: path.read_text() for path in secrets.iterdir()} == first
    settings = Settings.from_env({
        "METERSTREAM_CLICKHOUSE_FILE": str(secrets / "clickhouse-url"),
        "METERSTREAM_INSECURE_HTTP_HOSTS": "clickhouse",
        "METERSTREAM_ADMIN_TOKEN_FILE": str(secrets / "admin-token"),
        "METERSTREAM_READ_TOKEN_FILE": str(secrets / "read-token"),
        "METERSTREAM_SECRET_KEY_FILE": str(secrets / "secret-key")})
    assert settings.clickhouse.url == (
        f"http://meterstream:{first['clickhouse-password']}@clickhouse:8123/meterstream")
    assert settings.admin_token == first["admin-token"]
    assert settings.read_token == first["read-token"]


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



def test_every_worker_metric_is_listed_in_the_worker_docs() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from processors import metrics

    text = (REPO / "docs" / "worker-and-quotas.md").read_text()
    # prometheus_client keeps a counter's name without the `_total` it exposes.
    exposed = [value._name + ("_total" if value._type == "counter" else "")
               for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)]
    assert len(exposed) > 10
    assert [name for name in exposed if f"`{name}" not in text] == []


def test_compose_checks_each_services_readiness_on_its_own_port() -> None:
    """Each meterstream service's healthcheck asks /readyz on the port the shared
    environment gives it, so that compose (and whatever depends on a healthy service)
    sees a worker or a sink that is up but not yet owning its partitions as unhealthy."""
    import yaml

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    ports = compose["x-meterstream"]["environment"]
    variable = {"receiver": "METERSTREAM_RECEIVER_PORT", "worker": "METERSTREAM_WORKER_PORT",
                "sink": "METERSTREAM_SINK_PORT", "console": "METERSTREAM_CONSOLE_PORT"}
    services = {name: service for name, service in compose["services"].items()
                if service.get("command", [None])[0] in variable}
    assert set(services) == set(variable)
    for name, service in services.items():
        check = service["healthcheck"]
        probe = check["test"][-1]
        assert f"http://127.0.0.1:{ports[variable[name]]}/readyz" in probe, name
        assert check["test"][:3] == ["CMD", "python", "-c"], name
        assert check["start_period"], name
        assert check["retries"] >= 3, name
