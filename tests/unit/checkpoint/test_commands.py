"""``spotshift ckpt`` against hostile stores (issue 11): forged checkpoints never travel, reads never
create a key, ``inspect`` sees damage, killed writers' leftovers are reported and swept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import blake3
import pytest
import torch

from spotshift.checkpoint.format import (
    CheckpointPayload,
    StoredCheckpoint,
    canonical_json,
    latest_checkpoint,
    list_checkpoints,
    open_checkpoint,
    read_latest_pointer,
    write_checkpoint,
)
from spotshift.checkpoint.keys import LocalKeyProvider
from spotshift.cli import main
from spotshift.errors import IntegrityError
from spotshift.sync.store import LocalChunkStore
from tests.training_support import forge_checkpoint

JOB = "job-f"
FROZEN = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))


def payload(step: int, lr: float = 1e-3) -> CheckpointPayload:
    head = torch.full((8, 32), float(step))
    return CheckpointPayload(
        job=JOB,
        step=step,
        tokens=step * 64,
        kind="periodic",
        location="gcp/us-central1",
        state={"train_config": {"learning_rate": lr, "seed": 3}, "data_position": {"next_step": step + 1}},
        parts={"model": {"frozen": FROZEN, "head": head}, "optim": {"exp_avg/head": head * 0.5}},
    )


@pytest.fixture
def keys(spotshift_home: Path) -> LocalKeyProvider:
    return LocalKeyProvider(create=True)  # the writer of these checkpoints (a first training run)


@pytest.fixture
def src(tmp_path: Path) -> LocalChunkStore:
    return LocalChunkStore(tmp_path / "src")


@pytest.fixture
def dst(tmp_path: Path) -> LocalChunkStore:
    return LocalChunkStore(tmp_path / "dst")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def forge(store: LocalChunkStore, ckpt_id: str) -> None:
    forge_checkpoint(store, JOB, ckpt_id)


# ---- 1. a forged checkpoint never travels ------------------------------------------------------------


def test_forged_checkpoint_is_not_migrated_into_an_empty_store(
    keys: LocalKeyProvider, src: LocalChunkStore, dst: LocalChunkStore, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = write_checkpoint(src, payload(7), keys)
    forge(src, ref.checkpoint_id)
    code, _, err = cli(capsys, "ckpt", "verify", ref.url)
    assert code == 2 and "metadata does not match its seal" in err
    code, out, err = cli(capsys, "ckpt", "migrate", ref.url, dst.url, "--no-record")
    assert code == 2, out
    assert err.count("\n") == 1 and ref.checkpoint_id in err and "seal" in err
    assert list_checkpoints(dst, JOB) == [] and read_latest_pointer(dst, JOB) is None


def test_forged_checkpoint_is_not_copied_in_full_over_a_good_older_one(
    keys: LocalKeyProvider, src: LocalChunkStore, dst: LocalChunkStore, capsys: pytest.CaptureFixture[str]
) -> None:
    old = write_checkpoint(src, payload(5), keys)
    assert cli(capsys, "ckpt", "migrate", old.url, dst.url, "--no-record")[0] == 0
    new = write_checkpoint(src, payload(7), keys)
    forge(src, new.checkpoint_id)
    for extra in (["--full"], []):  # a full copy, and a delta against the good older checkpoint
        code, _, err = cli(capsys, "ckpt", "migrate", new.url, dst.url, "--no-record", *extra)
        assert code == 2 and "seal" in err, (extra, err)
    assert list_checkpoints(dst, JOB) == [old.checkpoint_id]
    assert latest_checkpoint(dst, JOB) == old.checkpoint_id
    assert read_latest_pointer(dst, JOB)["checkpoint_id"] == old.checkpoint_id  # type: ignore[index]


def test_full_copy_opens_the_envelope_wrong_or_missing_key_refused(
    keys: LocalKeyProvider,
    src: LocalChunkStore,
    dst: LocalChunkStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ref = write_checkpoint(src, payload(7), keys)
    other = LocalKeyProvider(tmp_path / "other.key", create=True)
    code, _, err = cli(
        capsys, "ckpt", "migrate", ref.url, dst.url, "--full", "--no-record", "--key-provider", other.spec
    )
    assert code == 2 and "wrong key" in err
    missing = tmp_path / "no" / "such.key"
    code, _, err = cli(
        capsys,
        "ckpt",
        "migrate",
        ref.url,
        dst.url,
        "--full",
        "--no-record",
        "--key-provider",
        f"local:{missing}",
    )
    assert code == 2 and f"key file {missing} does not exist" in err
    assert not missing.exists() and not missing.parent.exists()
    assert list_checkpoints(dst, JOB) == []


def test_commit_marker_is_keyed(keys: LocalKeyProvider, src: LocalChunkStore, tmp_path: Path) -> None:
    ref = write_checkpoint(src, payload(7), keys)
    ck = StoredCheckpoint(src, JOB, ref.checkpoint_id)
    # nothing in the marker can be recomputed without the key: no unkeyed hash of the metadata
    assert blake3.blake3(ck.meta_bytes).hexdigest() not in json.dumps(ck.commit)
    assert ck.verify(keys)["ok"]
    # an edited field of the marker (the step a pointer would trust) is refused
    src.put_bytes(ck.prefix + "COMMIT", canonical_json(dict(ck.commit, step=9)))
    with pytest.raises(IntegrityError, match="commit marker does not authenticate"):
        StoredCheckpoint(src, JOB, ref.checkpoint_id).verify(keys)
    # the marker of another encryption of the same checkpoint (a valid MAC under another data key)
    other = write_checkpoint(LocalChunkStore(tmp_path / "o"), payload(7), keys)
    assert other.checkpoint_id == ref.checkpoint_id
    theirs = json.loads((tmp_path / "o" / ck.prefix / "COMMIT").read_bytes())
    src.put_bytes(ck.prefix + "COMMIT", canonical_json(dict(theirs, meta_key=ck.commit["meta_key"])))
    with pytest.raises(IntegrityError, match="commit marker does not authenticate"):
        StoredCheckpoint(src, JOB, ref.checkpoint_id).verify(keys)
    src.put_bytes(ck.prefix + "COMMIT", canonical_json(ck.commit))
    assert StoredCheckpoint(src, JOB, ref.checkpoint_id).verify(keys)["ok"]


def test_replicate_and_tiered_upload_refuse_a_forgery(
    keys: LocalKeyProvider, src: LocalChunkStore, dst: LocalChunkStore, tmp_path: Path
) -> None:
    """What the Dagster ``sync_checkpoint`` op / ``checkpoint_replicas`` and the trainer's uploader call."""
    from spotshift.checkpoint.tiered import TieredCheckpointer, copy_checkpoint

    ref = write_checkpoint(src, payload(7), keys)
    forge(src, ref.checkpoint_id)
    with pytest.raises(IntegrityError, match="seal"):
        copy_checkpoint(src, dst, JOB, ref.checkpoint_id, keys)
    tiers = TieredCheckpointer(job=JOB, local_dir=tmp_path / "local", region_store=dst, keys=keys)
    try:
        local = write_checkpoint(tiers.local, payload(8), keys)
        forge(tiers.local, local.checkpoint_id)
        event = tiers._upload(local, "periodic", {}, replicate=False)
    finally:
        tiers.close()
    assert event.error is not None and "seal" in event.error
    assert list_checkpoints(dst, JOB) == []
    assert list(dst.list_keys(f"checkpoints/{JOB}/")) == []  # parts sent alongside the check are removed


def test_malformed_metadata_is_one_line(
    keys: LocalKeyProvider, src: LocalChunkStore, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = write_checkpoint(src, payload(7), keys)
    ck = StoredCheckpoint(src, JOB, ref.checkpoint_id)
    for bad in ({"model": {"key": "../../../escape"}}, {"model": "x"}, {}):
        meta = dict(json.loads(ck.meta_bytes), parts=bad)
        raw = json.dumps(meta).encode()
        src.put_bytes(ck.prefix + ck.commit["meta_key"], raw)
        commit = {k: ck.commit[k] for k in ("checkpoint_id", "meta_key", "step", "committed_at")}
        src.put_bytes(
            ck.prefix + "COMMIT", canonical_json(dict(commit, meta_hash=blake3.blake3(raw).hexdigest()))
        )
        for action in ("inspect", "verify"):
            code, _, err = cli(capsys, "ckpt", action, ref.url)
            assert code == 2 and err.count("\n") == 1 and "metadata is malformed" in err, (bad, action, err)


# ---- 5. reading never creates a key ------------------------------------------------------------------


def test_verify_with_a_missing_key_file_does_not_create_it(
    keys: LocalKeyProvider, src: LocalChunkStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = write_checkpoint(src, payload(7), keys)
    missing = tmp_path / "no" / "such" / "file"
    code, _, err = cli(capsys, "ckpt", "verify", ref.url, "--key-provider", f"local:{missing}")
    assert code == 2 and err.count("\n") == 1
    assert f"key file {missing} does not exist" in err and "wrong key" not in err
    assert not missing.exists()


def test_read_commands_in_a_fresh_home_create_no_key(
    keys: LocalKeyProvider,
    src: LocalChunkStore,
    dst: LocalChunkStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ref = write_checkpoint(src, payload(7), keys)
    fresh = tmp_path / "fresh-home"  # a mistyped SPOTSHIFT_HOME
    monkeypatch.setenv("SPOTSHIFT_HOME", str(fresh))
    for args in (["verify", ref.url], ["migrate", ref.url, dst.url, "--no-record"]):
        code, _, err = cli(capsys, "ckpt", *args)
        assert code == 2 and f"key file {fresh / 'keys' / 'kek.key'} does not exist" in err, (args, err)
    assert cli(capsys, "ckpt", "inspect", ref.url)[0] == 0
    assert cli(capsys, "ckpt", "list", str(src.root / "checkpoints" / JOB))[0] == 0
    assert not (fresh / "keys").exists()
    assert list_checkpoints(dst, JOB) == []


# ---- 8. inspect sees damage ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("half", "part model truncated"),
        ("extra", "part model has extra bytes"),
        ("delete", "part model is missing"),
    ],
)
def test_inspect_reports_a_damaged_part(
    keys: LocalKeyProvider,
    src: LocalChunkStore,
    capsys: pytest.CaptureFixture[str],
    damage: str,
    says: str,
) -> None:
    ref = write_checkpoint(src, payload(7), keys)
    assert cli(capsys, "ckpt", "inspect", ref.url)[0] == 0
    ck = StoredCheckpoint(src, JOB, ref.checkpoint_id)
    part = src.root / ck.prefix / ck.meta["parts"]["model"]["key"]
    data = part.read_bytes()
    if damage == "half":
        part.write_bytes(data[: len(data) // 2])
    elif damage == "extra":
        part.write_bytes(data + b"\0")
    else:
        part.unlink()
    code, out, err = cli(capsys, "ckpt", "inspect", ref.url)
    assert code == 2 and err.count("\n") == 1 and says in err and ref.checkpoint_id in err
    assert "DAMAGED" in out  # the metadata is still shown, with the damage marked
    code, out, _ = cli(capsys, "ckpt", "inspect", ref.url, "--json")
    doc = json.loads(out)
    assert code == 2 and doc["ok"] is False and any(says.split(" ", 2)[2] in d for d in doc["damage"])


# ---- 9. leftovers of killed writers ---------------------------------------------------------------


KILL_MID_COPY = """
import os, shutil, signal, sys
real = shutil.copyfileobj
def copy_half_then_die(fsrc, fdst, length=0):
    fdst.write(fsrc.read(4096)); fdst.flush()
    os.kill(os.getpid(), signal.SIGKILL)
shutil.copyfileobj = copy_half_then_die
from spotshift.cli import main
sys.exit(main(sys.argv[1:]))
"""

KILL_AFTER_DELTA_SHIPPED = """
import os, signal, sys
import spotshift.checkpoint.migrate as m
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
m.apply_delta_object = die
m.write_plain_checkpoint = die
from spotshift.cli import main
sys.exit(main(sys.argv[1:]))
"""


def killed_cli(script: str, *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=os.environ
    )
    assert proc.returncode == -9, proc.stderr[-500:]


def test_killed_migrate_leftovers_are_reported_and_swept(
    keys: LocalKeyProvider, src: LocalChunkStore, dst: LocalChunkStore, capsys: pytest.CaptureFixture[str]
) -> None:
    first = write_checkpoint(src, payload(5), keys)
    killed_cli(KILL_MID_COPY, "ckpt", "migrate", first.url, dst.url, "--full", "--no-record")
    tmp_files = list((dst.root / ".tmp").iterdir())
    assert len(tmp_files) == 1 and tmp_files[0].stat().st_size > 0  # the killed writer's partial part
    code, out, _ = cli(capsys, "ckpt", "list", str(dst.root / "checkpoints" / JOB), "--json")
    left = json.loads(out)["leftovers"]
    assert code == 0 and left["temp_files"] == 1 and left["temp_bytes"] == tmp_files[0].stat().st_size
    code, out, _ = cli(capsys, "ckpt", "list", str(dst.root / "checkpoints" / JOB))
    assert "leftover" in out and "1 temp file" in out
    # a later successful migrate into the same store removes the dead writer's file
    assert cli(capsys, "ckpt", "migrate", first.url, dst.url, "--no-record")[0] == 0
    assert list((dst.root / ".tmp").iterdir()) == []
    assert list_checkpoints(dst, JOB) == [first.checkpoint_id]

    # a delta migrate killed after shipping its delta, before applying it
    second = write_checkpoint(src, payload(6), keys)
    killed_cli(KILL_AFTER_DELTA_SHIPPED, "ckpt", "migrate", second.url, dst.url, "--no-record")
    incoming = dst.root / "checkpoints" / JOB / "incoming"
    assert len(list(incoming.iterdir())) == 1
    code, out, _ = cli(capsys, "ckpt", "list", str(dst.root / "checkpoints" / JOB), "--json")
    assert json.loads(out)["leftovers"]["incoming"] == 1
    assert cli(capsys, "ckpt", "migrate", second.url, dst.url, "--no-record")[0] == 0
    assert not incoming.exists() or list(incoming.iterdir()) == []
    assert open_checkpoint(dst, JOB).checkpoint_id == second.checkpoint_id
    code, out, _ = cli(capsys, "ckpt", "list", str(dst.root / "checkpoints" / JOB), "--json")
    assert json.loads(out)["leftovers"] == {
        "temp_files": 0,
        "temp_bytes": 0,
        "incoming": 0,
        "incoming_bytes": 0,
        "uncommitted": [],
    }


KILL_DURING_UPLOAD = """
import os, shutil, signal, sys
from spotshift.checkpoint.keys import LocalKeyProvider
from spotshift.checkpoint.tiered import TieredCheckpointer
from spotshift.sync.store import LocalChunkStore
sys.path.insert(0, sys.argv[3])
from tests.unit.checkpoint.test_commands import payload
def copy_half_then_die(fsrc, fdst, length=0):
    fdst.write(fsrc.read(4096)); fdst.flush()
    os.kill(os.getpid(), signal.SIGKILL)
tiers = TieredCheckpointer(job="job-f", local_dir=sys.argv[1], region_store=LocalChunkStore(sys.argv[2]),
                           keys=LocalKeyProvider())
local = tiers.local
from spotshift.checkpoint.format import write_checkpoint
ref = write_checkpoint(local, payload(5), tiers.keys)
shutil.copyfileobj = copy_half_then_die
tiers._upload(ref, "periodic", {}, replicate=False)
"""


def test_trainer_killed_during_upload_leftovers_swept_by_the_next_writer(
    keys: LocalKeyProvider, dst: LocalChunkStore, tmp_path: Path
) -> None:
    from spotshift.checkpoint.tiered import TieredCheckpointer

    repo = Path(__file__).resolve().parents[3]
    proc = subprocess.run(
        [sys.executable, "-c", KILL_DURING_UPLOAD, str(tmp_path / "w1"), str(dst.root), str(repo)],
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert proc.returncode == -9, proc.stderr[-500:]
    assert len(list((dst.root / ".tmp").iterdir())) == 1
    # the next trainer writing into the same region store (another workdir) sweeps it
    tiers = TieredCheckpointer(job=JOB, local_dir=tmp_path / "w2", region_store=dst, keys=keys)
    tiers.close()
    assert list((dst.root / ".tmp").iterdir()) == []
