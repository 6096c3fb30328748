"""The README's "Run it" commands, run as written against a real pipeline, print what the
README shows.

The commands after `deploy/up.sh` are taken from README.md itself, so an edit that breaks
them (a renamed flag, a moved file, a changed answer) fails here. They run with bash in the
repository, against `meterstream up` on its own namespace, data directory and ports: the
README reads those through `${METERSTREAM_DATA_DIR:-...}` and
`${METERSTREAM_RECEIVER_PORT:-...}`, and the admin token from the data directory, where this
test puts it as `deploy/up.sh` does.

The block is cut at blank lines into steps. A step's trailing `# ` comment lines are its
expected output, compared with what it printed with whitespace runs made one space, spaces
inside `{}`/`[]` ignored (the CLI prints JSON indented) and `...` standing for anything.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support import REPO, wait_for
from tests.support.pipeline import running_pipeline

STEP_MARK = "@@readme-step-done@@"


@dataclass
class Step:
    commands: str
    expected: list[str]  # the output the README shows after the commands; [] shows none


def run_it_blocks(readme: str) -> list[str]:
    """The ```sh blocks of the README's "Run it" section after the one that is `deploy/up.sh`."""
    section = readme.split("\n## Run it\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```sh\n(.*?)^```$", section, re.M | re.S)
    start = blocks.index("deploy/up.sh\n")
    return blocks[start + 1:]


def steps(block: str) -> list[Step]:
    found = []
    for paragraph in re.split(r"\n\s*\n", block.strip()):
        lines = paragraph.splitlines()
        end = len(lines)
        while end > 0 and lines[end - 1].startswith("#"):
            end -= 1
        commands = [line for line in lines[:end] if not line.startswith("#")]
        assert commands, f"a paragraph of comments only:\n{paragraph}"
        found.append(Step("\n".join(lines[:end]),
                          [line.removeprefix("#").strip() for line in lines[end:]]))
    return found


def _normal(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r" ?([\]}])", r"\1", re.sub(r"([\[{]) ?", r"\1", text))


def shows(expected: list[str], output: str) -> bool:
    """Whether `output` is what the README's comment lines `expected` show."""
    pattern = re.escape(_normal(" ".join(expected))).replace(re.escape("..."), ".*?")
    return re.fullmatch(pattern, _normal(output), re.S) is not None


def test_run_it_has_steps_that_show_their_output() -> None:
    """Without a broker: the README's Run it block is found and cut as the test expects."""
    found = [step for block in run_it_blocks((REPO / "README.md").read_text())
             for step in steps(block)]
    assert len(found) >= 2
    assert any("/v1/convex/logs" in step.commands and step.expected for step in found)
    assert found[-1].expected


def test_the_output_matching_is_strict_where_it_must_be() -> None:
    assert shows(['{"name": "x", ..., "ok": true, ...}'],
                 '{\n  "name": "x",\n  "team": null,\n  "ok": true,\n  "n": 1\n}')
    assert not shows(['{"name": "x", ..., "ok": true, ...}'], '{"name": "y", "ok": true}')
    assert shows(["a  query  1180  0", "a  action  0  18234"],
                 "a\tquery\t1180\t0\na\taction\t0\t18234\n")
    assert not shows(["a  query  1180  0"], "a\tquery\t1180\t0\na\tquery\t1180\t0\n")
    assert not shows(['{"accepted": 5}'], '{"accepted": 4}')


def _bash(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180, check=False)


def test_run_it_prints_what_the_readme_shows(kafka_bootstrap: str, tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    blocks = run_it_blocks(readme)
    assert blocks, 'no ```sh block after deploy/up.sh in "Run it"'
    all_steps = [step for block in blocks for step in steps(block)]
    # The last step reads what the pipeline stored; the sink stores it within a second or
    # so, so that step is asked again until it shows the README's rows.
    *first, last = all_steps
    assert last.expected, "the last step of Run it shows no output to check"

    with running_pipeline(kafka_bootstrap, tmp_path) as pipeline:
        env = {**os.environ, **pipeline.env}
        # As deploy/up.sh: the admin token in the data directory, not in the environment.
        token = Path(env["METERSTREAM_DATA_DIR"]) / "admin-token"
        token.write_text(env.pop("METERSTREAM_ADMIN_TOKEN"))
        token.chmod(0o600)

        script = "".join(f"{step.commands}\necho {STEP_MARK}\n" for step in first)
        run = _bash(script, env)
        assert run.returncode == 0, f"Run it failed:\n{run.stdout}\n{run.stderr}"
        outputs = run.stdout.split(f"{STEP_MARK}\n")
        assert len(outputs) == len(first) + 1, run.stdout
        assert outputs[-1] == "", run.stdout
        for step, output in zip(first, outputs, strict=False):
            if step.expected:
                assert shows(step.expected, output), (
                    f"{step.commands}\nprinted:\n{output}\nthe README shows:\n"
                    + "\n".join(step.expected) + f"\nstderr:\n{run.stderr}")

        def last_output() -> str:
            result = _bash(last.commands, env)
            assert result.returncode == 0, f"{last.commands}\n{result.stderr}"
            return result.stdout

        seen: list[str] = []

        def shows_the_rows() -> bool:
            seen.append(last_output())
            return shows(last.expected, seen[-1])

        try:
            wait_for(shows_the_rows, timeout=60, what="the last step to show the README's rows")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{last.commands}\nprinted:\n{seen[-1]}\n"
                                 "the README shows:\n" + "\n".join(last.expected)) from None
