"""Emergency checkpoints stream to the local tier and the region store in one pass (issue 16 item 6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from spotshift.checkpoint.catalog import read_latest_pointer
from spotshift.checkpoint.format import StoredCheckpoint, list_checkpoints
from spotshift.checkpoint.keys import LocalKeyProvider
from spotshift.checkpoint.tiered import TieredCheckpointer
from spotshift.sync.store import LocalChunkStore
from tests.unit.checkpoint.test_commands import JOB, payload


@pytest.fixture
def keys(spotshift_home: Path) -> LocalKeyProvider:
    return LocalKeyProvider(create=True)


def test_sync_save_commits_the_same_bytes_in_both_stores_in_one_pass(
    keys: LocalKeyProvider, tmp_path: Path
) -> None:
    region = LocalChunkStore(tmp_path / "region")
    events: list[Any] = []
    tiers = TieredCheckpointer(
        job=JOB, local_dir=tmp_path / "local", region_store=region, keys=keys, on_upload=events.append
    )
    timings: dict[str, float] = {}
    try:
        local_ref, event = tiers.save(payload(9), sync=True, timings=timings)
    finally:
        tiers.close()
    assert event is not None and event.error is None and event.tier == "region" and events == [event]
    assert timings["upload_s"] == 0.0  # nothing left to upload after the commit
    assert list_checkpoints(region, JOB) == list_checkpoints(tiers.local, JOB) == [local_ref.checkpoint_id]
    ck = StoredCheckpoint(region, JOB, local_ref.checkpoint_id)
    assert ck.verify(keys)["ok"]  # every check of `spotshift ckpt verify`
    prefix = ck.prefix
    for key in region.list_keys(prefix):
        if not key.endswith("COMMIT"):
            assert (region.root / key).read_bytes() == (tiers.local.root / key).read_bytes(), key
    assert not any((region.root / ".tmp").iterdir()) and not any((tiers.local.root / ".tmp").iterdir())


def test_a_failing_region_write_falls_back_to_local_then_upload(
    keys: LocalKeyProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import spotshift.checkpoint.tiered as tiered

    real = tiered.write_checkpoint

    def region_disk_full(*args: Any, mirror: Any = None, linked: Any = None, **kw: Any) -> Any:
        if mirror is not None or linked is not None:
            raise OSError(28, "No space left on device")
        return real(*args, **kw)

    monkeypatch.setattr(tiered, "write_checkpoint", region_disk_full)
    region = LocalChunkStore(tmp_path / "region")
    tiers = TieredCheckpointer(job=JOB, local_dir=tmp_path / "local", region_store=region, keys=keys)
    try:
        ref, event = tiers.save(payload(4), sync=True)
    finally:
        tiers.close()
    assert event is not None and event.error is None and event.seconds >= 0
    assert list_checkpoints(region, JOB) == [ref.checkpoint_id]
    assert StoredCheckpoint(region, JOB, ref.checkpoint_id).verify(keys)["ok"]


def test_the_local_tier_is_linked_only_after_the_region_commit(
    keys: LocalKeyProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import spotshift.checkpoint.writer as writer

    real_link = writer.link_files
    seen: list[tuple[bool, Any]] = []

    def link(src: LocalChunkStore, dst: LocalChunkStore, prefix: str, names: list[str]) -> None:
        seen.append((src.exists(prefix + "COMMIT"), read_latest_pointer(src, JOB)))
        real_link(src, dst, prefix, names)

    monkeypatch.setattr(writer, "link_files", link)
    region = LocalChunkStore(tmp_path / "region")
    tiers = TieredCheckpointer(job=JOB, local_dir=tmp_path / "local", region_store=region, keys=keys)
    try:
        ref, event = tiers.save(payload(5), sync=True)
    finally:
        tiers.close()
    assert event is not None and event.error is None and ref.store_url == tiers.local.url
    assert len(seen) == 1 and seen[0][0] and seen[0][1]["checkpoint_id"] == ref.checkpoint_id
    ck = StoredCheckpoint(tiers.local, JOB, ref.checkpoint_id)
    assert ck.verify(keys)["ok"] and StoredCheckpoint(region, JOB, ref.checkpoint_id).verify(keys)["ok"]
    for key in region.list_keys(ck.prefix):  # the bytes are written once: the local tier links them
        if not key.endswith("COMMIT"):
            assert (region.root / key).stat().st_ino == (tiers.local.root / key).stat().st_ino, key


def test_a_region_commit_that_fails_links_nothing_into_the_local_tier(
    keys: LocalKeyProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import spotshift.checkpoint.writer as writer

    region, local = LocalChunkStore(tmp_path / "region"), LocalChunkStore(tmp_path / "local")
    real_commit = writer.commit_checkpoint

    def commit(store: Any, *args: Any, **kw: Any) -> Any:
        if store is region:
            raise OSError(5, "Input/output error")
        return real_commit(store, *args, **kw)

    monkeypatch.setattr(writer, "commit_checkpoint", commit)
    with pytest.raises(OSError, match="Input/output"):
        writer.write_checkpoint(region, payload(6), keys, linked=local)
    assert list_checkpoints(local, JOB) == [] and not [k for k in local.list_keys("") if JOB in k]
