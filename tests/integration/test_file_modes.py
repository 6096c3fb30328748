"""The data directory is 0700 and what meterstream writes there is for its user only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.support import meterstream, own_broker_env


def open_to_others(root: Path) -> list[str]:
    """Every file or directory under `root` (symlinks not followed) that group or others
    may read, write or enter."""
    found = []
    for directory, names, files in os.walk(root):
        for name in [*names, *files]:
            mode = os.lstat(Path(directory) / name).st_mode
            if not stat.S_ISLNK(mode) and mode & 0o077:
                found.append(f"{Path(directory) / name} {stat.filemode(mode)}")
    if os.lstat(root).st_mode & 0o077:
        found.append(f"{root} {stat.filemode(os.lstat(root).st_mode)}")
    return found


def test_broker_and_chdb_files_are_private(tmp_path: Path) -> None:
    # own_broker_env makes <data dir>/kafka with this test's umask (0755): as an older
    # version left it.
    env = own_broker_env(tmp_path)
    data_dir = Path(env["METERSTREAM_DATA_DIR"])
    assert open_to_others(data_dir)
    meterstream(["kafka", "start"], env, timeout=600)
    try:
        meterstream(["sql", "--write",
                     "CREATE TABLE t (a Int32) ENGINE = MergeTree ORDER BY a"], env)
        meterstream(["sql", "--write", "INSERT INTO t VALUES (1)"], env)
        assert meterstream(["sql", "SELECT count() FROM t"], env).stdout == "1\n"
        topic_logs = data_dir / "kafka" / "data"
        assert any(topic_logs.iterdir())
        assert any((data_dir / "clickhouse").rglob("*.bin")) or any(
            (data_dir / "clickhouse").iterdir())
        assert open_to_others(data_dir) == []
    finally:
        meterstream(["kafka", "stop"], env)


def test_an_older_open_data_directory_is_closed_at_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "ms"
    (data_dir / "clickhouse" / "store").mkdir(parents=True, mode=0o755)
    os.chmod(data_dir, 0o755)
    old = data_dir / "clickhouse" / "store" / "data.bin"
    old.write_text("rows")
    os.chmod(old, 0o644)
    outside = tmp_path / "shared"
    outside.mkdir(mode=0o755)
    os.chmod(outside, 0o755)
    (data_dir / "link").symlink_to(outside)
    meterstream(["secrets", "generate-key"], {"METERSTREAM_DATA_DIR": str(data_dir)})
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    assert open_to_others(data_dir) == []
    # What a symlink points to is not ours to change.
    assert stat.S_IMODE(outside.stat().st_mode) == 0o755
