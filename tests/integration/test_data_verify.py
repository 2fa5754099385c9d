"""A flipped byte in a DVC cache object and in its remote copy: `driftloop data verify` names
both (DVC's own status trusts its state database and misses bit rot that keeps the mtime)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import Project, cli

pytestmark = pytest.mark.slow


def flip_one_byte(path: Path) -> None:
    """Bit rot: one byte changed in place, size and mtime kept."""
    stat = path.stat()
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def objects(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".dir"))


def test_a_flipped_byte_in_the_cache_and_on_the_remote_is_detected_and_named(
    project: Project,
) -> None:
    assert cli("ingest", "--until", "2012-03-31").exit_code == 0
    clean = cli("data", "verify", "--remote", "--json").json()
    assert clean["ok"] and clean["checked"] >= 4

    (cached,) = objects(project.root / ".dvc" / "cache" / "files" / "md5")[:1]
    flip_one_byte(cached)
    found = cli("data", "verify", "--json")
    assert found.exit_code == 3
    import json

    report = json.loads(found.stdout)
    (bad,) = report["corrupt"]
    assert bad["where"] == "cache" and bad["path"] == str(cached)
    assert bad["tracked"].endswith(".parquet") and "data/raw" in bad["tracked"]

    (remote_copy,) = objects(project.remote / "files" / "md5")[:1]
    flip_one_byte(remote_copy)
    both = cli("data", "verify", "--remote")
    assert both.exit_code == 3
    assert "corrupt cache object" in both.stdout and "corrupt remote object" in both.stdout
