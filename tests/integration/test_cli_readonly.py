"""Read-only commands against the real broker leave it as they found it: on a namespace of
which no topic exists (no meterstream service ever ran on it), `usage`, `invoices show` and
`sql` answer, and afterwards the broker still has none of its topics. `usage` and `invoices
show` print aligned tables at a terminal (docs/cli.md)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from meterstream.core import migrate
from meterstream.core.clickhouse import EngineLock, connect
from meterstream.core.config import ClickHouseTarget
from tests.support import meterstream
from tests.support.october import october_usage
from tests.support.terminal import at_terminal


async def _topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> dict[str, str]:
    path = tmp_path_factory.mktemp("readonly") / "clickhouse"
    with EngineLock(path):
        client = connect(ClickHouseTarget(url=f"chdb://{path}", chdb_path=path))
        migrate.apply(client)
        october_usage(client)
        client.close()
    return {"METERSTREAM_KAFKA": kafka_bootstrap,
            "METERSTREAM_NAMESPACE": f"ro{uuid.uuid4().hex[:10]}",
            "METERSTREAM_CLICKHOUSE": f"chdb://{path}",
            "METERSTREAM_DATA_DIR": str(path.parent / "ms")}


def test_read_only_commands_create_no_topic(env: dict[str, str]) -> None:
    namespace = env["METERSTREAM_NAMESPACE"]

    def ours() -> set[str]:
        return {t for t in asyncio.run(_topics(env["METERSTREAM_KAFKA"]))
                if t.startswith(f"{namespace}.")}

    assert ours() == set()
    # No registry topic: no deployment has a team or plan, and the usage is still there.
    top = meterstream(["usage", "--top", "5", "--from", "2026-10", "--to", "2026-11",
                       "--format", "json"], env)
    # The October data has tokens of a model the price book does not price: said in a line.
    assert top.stderr == ("meterstream usage: no token prices for mystery/model-x; its "
                          "tokens' cost is left out\n")
    ranked = json.loads(top.stdout)["deployments"]
    assert {d["deployment"] for d in ranked} >= {"eu-app", "us-app"}
    assert {d["team"] for d in ranked} == {""}
    usage = meterstream(["usage", "--deployment", "eu-app", "--from", "2026-10", "--to",
                         "2026-11"], env)
    assert usage.stdout.splitlines()[0].startswith("start\tfunction_calls\t")
    shown = meterstream(["invoices", "show", "--period", "2026-10"], env)
    assert (json.loads(shown.stdout), shown.stderr) == ([], "")  # no "applied migration"
    assert meterstream(["sql", "SELECT count() > 0 FROM function_executions"],
                       env).stdout == "1\n"
    key = meterstream(["secrets", "generate-key"], env).stdout.strip()
    status = meterstream(["secrets", "status"], {**env, "METERSTREAM_SECRET_KEY": key})
    assert status.stdout.startswith("current key id: ")
    assert "records sealed with" not in status.stdout
    assert ours() == set()


def test_usage_and_invoices_are_tables_at_a_terminal(env: dict[str, str],
                                                     tmp_path: Path) -> None:
    code, shown = at_terminal(["usage", "--deployment", "eu-app", "--from", "2026-10",
                               "--to", "2026-11"], env)
    assert code == 0
    header, row = shown.splitlines()
    assert "\t" not in shown
    assert header.startswith("start                 function_calls")
    # Each value ends where its header ends: numbers are right-aligned under their names.
    for name in ("convex_cost", "cost"):
        end = header.rindex(name) + len(name)
        assert row[end - 1] != " "
        assert row[end:end + 1] in ("", " ")
    code, empty = at_terminal(["invoices", "show", "--period", "2026-09"], env)
    assert (code, empty) == (0, "no invoices\n")
