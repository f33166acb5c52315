"""Tensor deltas and checkpoint migration: apply round trip equals a full copy; fallback; refusal; CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spotshift.checkpoint.delta import apply_delta, compute_delta
from spotshift.checkpoint.format import CheckpointPayload, StoredCheckpoint, open_checkpoint, write_checkpoint
from spotshift.checkpoint.keys import LocalKeyProvider
from spotshift.checkpoint.migrate import apply_delta_object, migrate_checkpoint
from spotshift.checkpoint.tiered import copy_checkpoint
from spotshift.errors import ConfigError, IntegrityError
from spotshift.home import location_of_store, region_store_url
from spotshift.sync.store import LocalChunkStore
from spotshift.sync.store_url import open_store

SRC, DST = "gcp/us-central1", "aws/us-east-1"


def finetune_payload(step: int, frozen: torch.Tensor, head: torch.Tensor) -> CheckpointPayload:
    """A fine-tuning state: a big frozen tensor, a small trained head and its optimizer moment."""
    return CheckpointPayload(
        job="ft",
        step=step,
        tokens=step * 10,
        kind="periodic",
        location=SRC,
        state={"step": step},
        parts={"model": {"base": frozen, "head": head}, "optim": {"exp_avg/head": head * 0.1}},
    )


@pytest.fixture
def setup(spotshift_home: Path) -> tuple[LocalChunkStore, LocalChunkStore, LocalKeyProvider]:
    return open_store(region_store_url(SRC)), open_store(region_store_url(DST)), LocalKeyProvider(create=True)  # type: ignore[return-value]


def test_delta_round_trip_equals_full_copy(setup, tmp_path: Path) -> None:  # noqa: ANN001
    src, dst, keys = setup
    g = torch.Generator().manual_seed(0)
    frozen, head = torch.randn(256, 256, generator=g), torch.randn(16, 256, generator=g)
    old = write_checkpoint(src, finetune_payload(100, frozen, head), keys)
    first = migrate_checkpoint(src, "ft", dst, keys)
    assert first.method == "full" and first.bytes_sent == first.bytes_full and first.base is None
    new_head = head + 1e-3 * torch.randn(16, 256, generator=g)
    new = write_checkpoint(src, finetune_payload(600, frozen, new_head), keys)
    report = migrate_checkpoint(src, "ft", dst, keys)
    assert report.method == "tensor_delta" and report.base == old.checkpoint_id
    assert report.checkpoint_id == new.checkpoint_id
    assert report.bytes_sent < 0.25 * report.bytes_full  # the frozen 256x256 tensor is not sent at all
    assert report.tensors_total == 3 and report.tensors_sent == 2
    # the delta-built checkpoint is bitwise the checkpoint a full copy gives
    full_copy = LocalChunkStore(tmp_path / "full")
    copy_checkpoint(src, full_copy, "ft", new.checkpoint_id, keys)
    via_delta = open_checkpoint(dst, "ft").read_parts(keys)
    via_full = open_checkpoint(full_copy, "ft").read_parts(keys)
    assert via_delta == via_full
    assert open_checkpoint(dst, "ft").verify(keys)["content_hash"] == new.content_hash
    # nothing left in flight, and the transfer row is complete
    assert not [k for k in dst.list_keys("checkpoints/ft/incoming/")]
    row = report.transfer_row("test")
    assert row["kind"] == "checkpoint" and row["method"] == "tensor_delta"
    assert row["src_location"] == SRC and row["dst_location"] == DST and row["egress_usd_per_gb"] == 0.12
    assert row["bytes_full"] == report.bytes_full and row["bytes_sent"] == report.bytes_sent
    # migrating again is a no-op
    assert migrate_checkpoint(src, "ft", dst, keys).method == "present"


def test_delta_not_smaller_falls_back_to_full(setup) -> None:  # noqa: ANN001
    src, dst, keys = setup
    g = torch.Generator().manual_seed(1)

    def noise(*shape: int) -> torch.Tensor:  # uniformly random bits: XOR of two of them does not compress
        return torch.randint(-(2**31), 2**31 - 1, shape, generator=g, dtype=torch.int32)

    def state(step: int) -> CheckpointPayload:
        parts = {
            "model": {"base": noise(64, 64), "head": noise(4, 64)},
            "optim": {"exp_avg/head": noise(4, 64)},
        }
        return CheckpointPayload("ft", step, step, "periodic", SRC, {"step": step}, parts)

    write_checkpoint(src, state(1), keys)
    migrate_checkpoint(src, "ft", dst, keys)
    write_checkpoint(src, state(2), keys)
    report = migrate_checkpoint(src, "ft", dst, keys)
    assert report.method == "full" and report.bytes_sent == report.bytes_full
    assert any("not smaller" in n for n in report.notes)
    assert open_checkpoint(dst, "ft").step == 2


def test_delta_math_is_exact_for_every_dtype() -> None:
    from safetensors.torch import load, save

    g = torch.Generator().manual_seed(2)
    base = {
        "f": torch.randn(100, generator=g),
        "h": torch.randn(7, generator=g).half(),
        "i": torch.arange(9),
        "gone": torch.ones(3),
    }
    new = {
        "f": base["f"] + 1e-4,
        "h": base["h"],
        "i": torch.arange(9) * 2,
        "fresh": torch.zeros(2, 2),
        "reshaped": torch.ones(6),
    }
    base["reshaped"] = torch.ones(2, 3)
    plain, stats = compute_delta({"model": save(new)}, {"model": save(base)})
    out = load(apply_delta(plain, {"model": save(base)}, what="t")["model"])
    assert set(out) == set(new) and all(torch.equal(out[k], new[k]) for k in new)
    assert stats.tensors_total == 5 and stats.tensors_sent == 4  # "h" is unchanged


def test_tampered_delta_refused(setup) -> None:  # noqa: ANN001
    from spotshift.checkpoint.migrate import _encrypt_delta

    src, dst, keys = setup
    g = torch.Generator().manual_seed(3)
    frozen, head = torch.randn(64, 64, generator=g), torch.randn(4, 64, generator=g)
    write_checkpoint(src, finetune_payload(1, frozen, head), keys)
    migrate_checkpoint(src, "ft", dst, keys)
    new = write_checkpoint(src, finetune_payload(2, frozen, head + 1), keys)
    ck = StoredCheckpoint(src, "ft", new.checkpoint_id)
    plain, _ = compute_delta(ck.read_parts(keys), open_checkpoint(dst, "ft").read_parts(keys))
    base_id = open_checkpoint(dst, "ft").checkpoint_id
    obj = bytearray(_encrypt_delta("ft", ck, base_id, plain, keys))
    obj[-20] ^= 0x10
    dst.put_bytes("checkpoints/ft/incoming/x.delta", bytes(obj))
    with pytest.raises(IntegrityError, match="delta checkpoints/ft/incoming/x.delta.*does not authenticate"):
        apply_delta_object(dst, "checkpoints/ft/incoming/x.delta", keys)
    assert open_checkpoint(dst, "ft").checkpoint_id == base_id  # nothing committed


def test_base_must_be_at_target(setup) -> None:  # noqa: ANN001
    src, dst, keys = setup
    ref = write_checkpoint(src, finetune_payload(5, torch.ones(4), torch.ones(2)), keys)
    with pytest.raises(ConfigError, match="is not committed in"):
        migrate_checkpoint(src, "ft", dst, keys, base=ref.checkpoint_id)
    assert location_of_store(region_store_url(DST)) == DST and location_of_store("s3://b/x") is None


def test_cli_migrate_json_and_verify_refusal(setup, spotshift_home: Path) -> None:  # noqa: ANN001
    src, dst, keys = setup
    g = torch.Generator().manual_seed(4)
    frozen, head = torch.randn(128, 128, generator=g), torch.randn(8, 128, generator=g)
    write_checkpoint(src, finetune_payload(1, frozen, head), keys)
    migrate_checkpoint(src, "ft", dst, keys)
    new = write_checkpoint(src, finetune_payload(2, frozen, head * 1.01), keys)
    exe = Path(sys.executable).with_name("spotshift")
    out = subprocess.run(
        [exe, "ckpt", "migrate", f"{src.url}/checkpoints/ft", dst.url, "--json"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert {"bytes_full", "bytes_sent", "ratio", "seconds"} <= set(doc)
    assert doc["method"] == "tensor_delta" and doc["checkpoint_id"] == new.checkpoint_id
    assert 0 < doc["ratio"] < 0.5 and doc["bytes_sent"] < doc["bytes_full"]
    from spotshift import warehouse

    with warehouse.connect() as con:
        rows = con.execute("select method, bytes_sent, kind from raw.transfers").fetchall()
    assert rows == [("tensor_delta", doc["bytes_sent"], "checkpoint")]
    # verify: ok, then a flipped byte -> exit 2, one line naming the checkpoint
    path = f"{dst.root}/checkpoints/ft/{new.checkpoint_id}"
    ok = subprocess.run([exe, "ckpt", "verify", path], capture_output=True, text=True)
    assert ok.returncode == 0 and "ok:" in ok.stdout
    part = next(p for p in Path(path).glob("model-*.enc"))
    data = bytearray(part.read_bytes())
    data[50] ^= 4
    part.write_bytes(bytes(data))
    bad = subprocess.run([exe, "ckpt", "verify", path], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.count("\n") == 1 and f"checkpoint ft/{new.checkpoint_id}" in bad.stderr
    insp = subprocess.run([exe, "ckpt", "inspect", path, "--json"], capture_output=True, text=True)
    assert insp.returncode == 0 and json.loads(insp.stdout)["step"] == 2
