"""The ``latest`` pointer is written last (after ``COMMIT``) and only ever moves forward.

A crash between the two writes must leave at worst a committed checkpoint the pointer does not
name yet (found by a scan), never a pointer to a checkpoint without its marker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from spotshift.checkpoint.format import latest_key, read_latest_pointer
from spotshift.checkpoint.keys import LocalKeyProvider
from spotshift.sync.store import LocalChunkStore
from tests.unit.checkpoint.test_format import committed


class RecordingStore(LocalChunkStore):
    """A local store that logs every key written and can fail the write of one key (a crash)."""

    def __init__(self, root: Path, *, crash_on: str = "") -> None:
        super().__init__(root)
        self.written: list[str] = []
        self.crash_on = crash_on

    def put_bytes(self, key: str, data: bytes, **kw: Any) -> Any:
        if self.crash_on and key.endswith(self.crash_on):
            raise OSError(f"simulated crash writing {key}")
        self.written.append(key)
        return super().put_bytes(key, data, **kw)


@pytest.fixture
def keys(spotshift_home: Path) -> LocalKeyProvider:
    return LocalKeyProvider(create=True)


def test_latest_is_written_after_commit(tmp_path: Path, keys: LocalKeyProvider) -> None:
    store = RecordingStore(tmp_path / "store")
    ck = committed(store, keys, step=10)  # type: ignore[arg-type]
    commit, latest = ck.prefix + "COMMIT", latest_key("job-a")
    assert commit in store.written and latest in store.written
    assert store.written.index(commit) < store.written.index(latest)
    assert store.written[-1] == latest  # the pointer is the very last write


def test_a_crash_before_commit_leaves_the_pointer_alone(tmp_path: Path, keys: LocalKeyProvider) -> None:
    store = RecordingStore(tmp_path / "store")
    first = committed(store, keys, step=10)  # type: ignore[arg-type]
    store.crash_on = "/COMMIT"
    with pytest.raises(OSError, match="simulated crash"):
        committed(store, keys, step=20)  # type: ignore[arg-type]
    pointer = read_latest_pointer(store, "job-a")
    assert pointer is not None and pointer["checkpoint_id"] == first.checkpoint_id and pointer["step"] == 10


def test_the_pointer_never_moves_backwards(tmp_path: Path, keys: LocalKeyProvider) -> None:
    store = RecordingStore(tmp_path / "store")
    newer = committed(store, keys, step=10)  # type: ignore[arg-type]
    committed(store, keys, step=5)  # a slow upload of an older checkpoint lands later
    pointer = read_latest_pointer(store, "job-a")
    assert pointer is not None and (pointer["checkpoint_id"], pointer["step"]) == (newer.checkpoint_id, 10)
