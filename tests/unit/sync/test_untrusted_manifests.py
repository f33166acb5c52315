"""A manifest in a store is untrusted input (issue 11, defect 2), and killed writers' temp files are
cleaned and reported (defect 9, sync part).

The crafted manifests below are *consistent*: their content hashes to the root they are named by
and the pointer names them, exactly what anyone who can write to a bucket can produce.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from spotshift.cli import main
from spotshift.errors import InputError, IntegrityError
from spotshift.sync.archiver import push
from spotshift.sync.checker import verify
from spotshift.sync.entries import SYMLINK, FileEntry
from spotshift.sync.manifest import Manifest
from spotshift.sync.refs import Ref, load_manifest, manifest_key, read_ref, write_ref
from spotshift.sync.restorer import pull
from spotshift.sync.store import LocalChunkStore
from tests.unit.sync.conftest import SMALL


@pytest.fixture
def store(tmp_path: Path, spotshift_home: Path) -> LocalChunkStore:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "tool").write_text("#!/bin/sh\necho hi\n")
    (src / "shared").mkdir()
    st = LocalChunkStore(tmp_path / "store")
    push(src, st, "ds", params=SMALL)
    return st


def replant(store: LocalChunkStore, edit) -> Manifest:  # type: ignore[no-untyped-def]
    """Rewrite the dataset's snapshot with ``edit(entries)`` applied, root recomputed (consistent)."""
    ref = read_ref(store, "ds")
    assert ref is not None
    manifest, _ = load_manifest(store, ref.root)
    entries = list(manifest.entries)
    edit(entries)
    forged = Manifest(manifest.params, entries, manifest.locations)  # the pushed pack index
    store.put_bytes(manifest_key(forged.root), forged.to_parquet_bytes())
    write_ref(store, Ref.for_manifest("ds", forged))
    return forged


def set_mode(path: str, mode: int):  # type: ignore[no-untyped-def]
    def edit(entries: list[FileEntry]) -> None:
        for e in entries:
            if e.path == path:
                e.mode = mode

    return edit


def test_pull_strips_setuid_setgid_sticky_from_a_consistent_manifest(
    store: LocalChunkStore, tmp_path: Path
) -> None:
    replant(store, set_mode("bin/tool", 0o6755))
    replant(store, set_mode("shared", 0o1777))
    pull(store, tmp_path / "out")
    tool = (tmp_path / "out" / "bin" / "tool").stat().st_mode
    shared = (tmp_path / "out" / "shared").stat().st_mode
    assert stat.S_IMODE(tool) == 0o755, oct(tool)
    assert stat.S_IMODE(shared) == 0o777, oct(shared)


def test_keep_special_bits_is_explicit(store: LocalChunkStore, tmp_path: Path) -> None:
    replant(store, set_mode("bin/tool", 0o6755))
    code = main(["sync", "pull", store.url, str(tmp_path / "out"), "--no-record", "--keep-special-bits"])
    assert code == 0
    assert stat.S_IMODE((tmp_path / "out" / "bin" / "tool").stat().st_mode) == 0o6755
    code = main(["sync", "pull", store.url, str(tmp_path / "out2"), "--no-record"])
    assert code == 0
    assert stat.S_IMODE((tmp_path / "out2" / "bin" / "tool").stat().st_mode) == 0o755


def _add_symlink(target: str):  # type: ignore[no-untyped-def]
    def edit(entries: list[FileEntry]) -> None:
        entries.append(FileEntry("evil-link", SYMLINK, len(target), 0o777, 0, target))

    return edit


def test_symlink_target_with_nul_is_refused_with_one_line(
    store: LocalChunkStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    replant(store, _add_symlink("/etc/passwd\0/x"))
    with pytest.raises(IntegrityError, match="symlink target contains a NUL byte"):
        pull(store, tmp_path / "out")
    assert main(["sync", "pull", store.url, str(tmp_path / "out"), "--no-record"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "NUL" in err


def test_names_longer_than_the_file_system_allows_are_refused_before_writing(
    store: LocalChunkStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long_name = "n" * 300

    def edit(entries: list[FileEntry]) -> None:
        for e in entries:
            if e.path == "bin/tool":
                e.path = f"bin/{long_name}"

    replant(store, edit)
    with pytest.raises(InputError, match="entry name of 300 bytes is longer than"):
        pull(store, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))
    assert main(["sync", "pull", store.url, str(tmp_path / "out"), "--no-record"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "longer than" in err


def test_negative_mode_is_refused_with_one_line(
    store: LocalChunkStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # a negative mode cannot hash (u32), so the forger writes the Parquet by hand under any name
    ref = read_ref(store, "ds")
    assert ref is not None
    raw = store.get_bytes(manifest_key(ref.root))
    table = pq.read_table(io.BytesIO(raw))
    modes = table.column("mode").to_pylist()
    modes[-1] = -1
    table = table.set_column(table.schema.get_field_index("mode"), "mode", pa.array(modes, pa.int32()))
    sink = io.BytesIO()
    pq.write_table(table, sink)
    store.put_bytes(manifest_key(ref.root), sink.getvalue())
    with pytest.raises(IntegrityError, match="mode -1 is not a permission mode"):
        pull(store, tmp_path / "out")
    assert main(["sync", "pull", store.url, str(tmp_path / "out"), "--no-record"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


# ---- defect 9: temp files of killed writers ------------------------------------------------------
def _dead_pid() -> int:
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(out.stdout)


def test_pull_removes_partial_files_of_a_killed_pull(store: LocalChunkStore, tmp_path: Path) -> None:
    from spotshift.atomic import TEMP_PREFIX

    out = tmp_path / "out"
    pull(store, out)
    dead = _dead_pid()
    (out / "bin" / f"{TEMP_PREFIX}{dead}.abcdef").write_bytes(b"half a file" * 1000)
    (out / f"{TEMP_PREFIX}{dead}.123456").write_bytes(b"x")
    mine = out / f"{TEMP_PREFIX}{os.getpid()}.live"
    mine.write_bytes(b"a live writer's")
    user_file = out / "12345.notes"  # looks like a pid-named file, but is the user's
    user_file.write_text("keep me")
    pull(store, out)
    left = sorted(p.name for p in out.rglob(f"{TEMP_PREFIX}*"))
    assert left == [mine.name]
    assert user_file.read_text() == "keep me"


def test_verify_reports_leftover_temp_files_and_repair_removes_them(
    store: LocalChunkStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = _dead_pid()
    (store.root / ".tmp").mkdir(exist_ok=True)
    (store.root / ".tmp" / f"{dead}.0123456789abcdef").write_bytes(b"x" * 4096)
    report = verify(store)
    assert report.ok and report.leftover_temp_bytes == 4096 and len(report.leftover_temp_files) == 1
    assert main(["sync", "verify", store.url]) == 0
    assert "1 temp file(s) of killed writers" in capsys.readouterr().out
    report = verify(store, repair_from=store)
    assert report.leftovers_removed == 1
    assert verify(store).leftover_temp_files == []
