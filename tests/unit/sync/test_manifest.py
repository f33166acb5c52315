"""Manifests: Parquet round trip, Merkle root, refusal of truncated/tampered manifests, diff pruning."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spotshift.errors import IntegrityError
from spotshift.sync.diff import diff
from spotshift.sync.entries import FileEntry
from spotshift.sync.fingerprint import fingerprint
from spotshift.sync.manifest import COLUMNS, Manifest
from tests.unit.sync.conftest import SMALL, make_tree, rand_bytes


@pytest.fixture
def tree(tmp_path: Path, spotshift_home: Path) -> Path:
    return make_tree(tmp_path / "src")


def test_parquet_round_trip_keeps_root_and_columns(tree: Path) -> None:
    m = fingerprint(tree, SMALL).manifest
    data = m.to_parquet_bytes()
    table = pq.ParquetFile(io.BytesIO(data)).read()
    assert tuple(table.column_names) == COLUMNS
    assert table.schema.field("digest").type == pa.binary(16)
    back = Manifest.from_parquet_bytes(data, name="test", expected_root=m.root)
    assert back.root == m.root
    assert [(e.path, e.kind, e.size, e.mode, e.mtime_ns, e.target) for e in back.entries] == [
        (e.path, e.kind, e.size, e.mode, e.mtime_ns, e.target) for e in m.entries
    ]
    kinds = {e.path: e.kind for e in m.entries}
    assert kinds["sub/link-to-a"] == "symlink" and kinds["emptydir"] == "dir" and kinds["empty.txt"] == "file"
    assert m.get("empty.txt").chunk_count == 0  # type: ignore[union-attr]
    assert m.get("dangling").target == "/nonexistent/target"  # type: ignore[union-attr]


def test_root_changes_with_content_mode_and_mtime(tree: Path) -> None:
    r0 = fingerprint(tree, SMALL).root
    assert fingerprint(tree, SMALL).root == r0
    os.chmod(tree / "a.bin", 0o600)
    r1 = fingerprint(tree, SMALL).root
    assert r1 != r0
    os.utime(tree / "empty.txt", ns=(1, 1))
    r2 = fingerprint(tree, SMALL).root
    assert r2 not in (r0, r1)
    assert fingerprint(tree, SMALL.__class__(16384, 65536, 262144, SMALL.engine, "blake2b-128")).root != r2


def test_truncated_manifest_is_refused_and_named(tree: Path) -> None:
    data = fingerprint(tree, SMALL).manifest.to_parquet_bytes()
    with pytest.raises(IntegrityError, match="manifests/x.parquet.*truncated"):
        Manifest.from_parquet_bytes(data[: len(data) // 2], name="manifests/x.parquet")
    with pytest.raises(IntegrityError, match="truncated"):
        Manifest.from_parquet_bytes(b"", name="m")


def _rewrite(data: bytes, column: str, fn) -> bytes:  # type: ignore[no-untyped-def]
    table = pq.ParquetFile(io.BytesIO(data)).read()
    values = table.column(column).to_pylist()
    values = fn(values)
    table = table.set_column(
        table.column_names.index(column), column, pa.array(values, table.schema.field(column).type)
    )
    table = table.replace_schema_metadata(pq.ParquetFile(io.BytesIO(data)).schema_arrow.metadata)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def test_tampered_manifest_is_refused_and_named(tree: Path) -> None:
    m = fingerprint(tree, SMALL).manifest
    data = m.to_parquet_bytes()
    # flip one chunk digest: still a valid Parquet file, but it no longer hashes to its root
    tampered = _rewrite(data, "digest", lambda v: [bytes(16) if i == 3 else d for i, d in enumerate(v)])
    with pytest.raises(IntegrityError, match=f"manifests/{m.root}.parquet is tampered"):
        Manifest.from_parquet_bytes(tampered, name=f"manifests/{m.root}.parquet", expected_root=m.root)
    # a changed mtime is tampering too
    tampered = _rewrite(data, "mtime_ns", lambda v: [x + 1 for x in v])
    with pytest.raises(IntegrityError, match="tampered"):
        Manifest.from_parquet_bytes(tampered, name="m", expected_root=m.root)
    # and a manifest whose name (expected root) differs from its content
    with pytest.raises(IntegrityError, match="tampered"):
        Manifest.from_parquet_bytes(data, name="m", expected_root="0" * 32)


def test_unsafe_paths_and_writes_through_symlinks_are_refused(tree: Path) -> None:
    data = fingerprint(tree, SMALL).manifest.to_parquet_bytes()
    bad = _rewrite(data, "path", lambda v: ["../escape" if p == "a.bin" else p for p in v])
    with pytest.raises(IntegrityError, match="unsafe path"):
        Manifest.from_parquet_bytes(bad, name="m")
    with pytest.raises(IntegrityError, match="no parent directory"):
        Manifest(
            SMALL,
            [
                FileEntry(".", "dir"),
                FileEntry("l", "symlink", target="/etc"),
                FileEntry("l/passwd", "file"),
            ],
        )


def test_diff_prunes_equal_subtrees_and_knows_old_chunks(tmp_path: Path, spotshift_home: Path) -> None:
    src = tmp_path / "t"
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(3):
            (src / f"d{d}" / f"f{f}.bin").write_bytes(rand_bytes(200_000, d * 10 + f))
    old = fingerprint(src, SMALL).manifest
    with open(src / "d2" / "f1.bin", "r+b") as f:
        f.seek(100_000)
        f.write(b"edit")
    new = fingerprint(src, SMALL).manifest
    d = diff(new, old)
    assert [e.path for e in d.changed_files] == ["d2/f1.bin"]
    assert d.dirs_pruned == 3  # d0, d1, d3 skipped without looking at their files
    missing = d.missing_chunks()
    assert 1 <= len(missing) <= 2  # only chunks around the edit
    assert sum(missing.values()) < 200_000
    # against nothing, every file is changed
    assert len(diff(new, None).changed_files) == 12
    # a renamed directory's chunks are known to the target
    os.rename(src / "d3", src / "moved")
    renamed = fingerprint(src, SMALL).manifest
    assert diff(renamed, new).missing_chunks() == {}


def test_empty_dataset_has_a_manifest(tmp_path: Path, spotshift_home: Path) -> None:
    (tmp_path / "empty").mkdir()
    m = fingerprint(tmp_path / "empty", SMALL).manifest
    assert m.file_count == 0 and m.total_bytes == 0
    assert Manifest.from_parquet_bytes(m.to_parquet_bytes(), name="m", expected_root=m.root).root == m.root
