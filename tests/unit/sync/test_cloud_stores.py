"""S3 (moto server) and GCS (emulator) chunk stores over real HTTP: the ChunkStore contract and delta sync."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spotshift.cli import main
from spotshift.errors import CredentialsError, IntegrityError, NotFoundError, SpotshiftError
from spotshift.sync.archiver import push
from spotshift.sync.checker import verify
from spotshift.sync.replicator import replicate
from spotshift.sync.restorer import pull
from spotshift.sync.store import ChunkStore, LocalChunkStore
from spotshift.sync.store_url import open_store
from tests.unit.sync.conftest import SMALL, make_tree, rand_bytes, tree_bytes
from tests.unit.test_cloud_errors import assert_clean, one_clean_line


def contract(store: ChunkStore, tmp_path: Path, *, write_once_enforced: bool = True) -> None:
    """What every ChunkStore must do (the GCS emulator does not enforce if_generation_match)."""
    assert not store.exists("a/b") and store.size("a/b") is None
    with pytest.raises(NotFoundError, match="a/b not found"):
        store.get_bytes("a/b")
    assert store.put_bytes("a/b", b"hello")
    assert store.exists("a/b") and store.size("a/b") == 5 and store.get_bytes("a/b") == b"hello"
    assert store.put_bytes("a/b", b"replaced")  # plain puts replace
    assert store.get_bytes("a/b") == b"replaced"
    src = tmp_path / "f.bin"
    src.write_bytes(rand_bytes(300_000, 5))
    assert store.put_file("files/f.bin", src)
    store.get_file("files/f.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    # ranged reads (how chunks in pack files are read): exact ranges, short at the end
    data = src.read_bytes()
    assert store.get_range("files/f.bin", 1000, 5000) == data[1000:6000]
    assert store.get_range("files/f.bin", 299_990, 100) == data[299_990:]
    with pytest.raises(NotFoundError):
        store.get_range("files/none.bin", 0, 10)
    try:  # past the end (a tampered pack index): nothing, or an integrity error — never other bytes
        assert store.get_range("files/f.bin", 400_000, 10) == b""
    except IntegrityError as exc:
        assert "past its end" in str(exc)
    assert sorted(store.list_keys("a/")) == ["a/b"]
    assert sorted(store.list_keys()) == ["a/b", "files/f.bin"]
    digest = "ab" * 16
    assert store.put_chunk(digest, b"chunk") and store.has_chunk(digest)
    assert store.put_chunk(digest, b"chunk") is not write_once_enforced
    store.delete("a/b")
    store.delete("a/b")  # deleting a missing key is not an error
    assert not store.exists("a/b")


def test_s3_store_contract_and_write_once(s3_env: str, tmp_path: Path) -> None:
    store = open_store(f"s3://{s3_env}/region/aws-us-east-1")
    contract(store, tmp_path)
    # write-once is enforced by S3 itself (If-None-Match: *), not by a check-then-put
    assert store.put_bytes("manifests/m.parquet", b"1", if_absent=True)
    assert not store.put_bytes("manifests/m.parquet", b"2", if_absent=True)
    assert store.get_bytes("manifests/m.parquet") == b"1"
    import boto3

    raw = boto3.client("s3")
    with pytest.raises(raw.exceptions.ClientError, match="PreconditionFailed|412"):
        raw.put_object(
            Bucket=s3_env, Key="region/aws-us-east-1/manifests/m.parquet", Body=b"3", IfNoneMatch="*"
        )
    # the prefix isolates stores in one bucket
    assert sorted(open_store(f"s3://{s3_env}/region").list_keys("aws-us-east-1/manifests/")) == [
        "aws-us-east-1/manifests/m.parquet"
    ]


def test_s3_multipart_upload_for_large_objects(s3_env: str, tmp_path: Path) -> None:
    from spotshift.sync.store_s3 import S3ChunkStore

    store = S3ChunkStore(s3_env, "mp", multipart_threshold=5 << 20, part_size=5 << 20)
    big = rand_bytes(12 << 20, 7)
    assert store.put_bytes("big.bin", big, if_absent=True)
    assert not store.put_bytes(
        "big.bin", big, if_absent=True
    )  # CompleteMultipartUpload honours If-None-Match
    assert store.get_bytes("big.bin") == big
    f = tmp_path / "big.bin"
    f.write_bytes(big)
    assert store.put_file("file.bin", f)
    import boto3

    head = boto3.client("s3").head_object(Bucket=s3_env, Key="mp/file.bin")
    assert head["ContentLength"] == len(big) and "-" in head["ETag"]  # a multipart ETag
    assert not boto3.client("s3").list_multipart_uploads(Bucket=s3_env).get("Uploads")


def test_s3_endpoint_url_argument_is_honoured(
    moto_endpoint: str, s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spotshift.sync.store_s3 import S3ChunkStore

    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    store = S3ChunkStore(s3_env, "x", endpoint_url=moto_endpoint)
    assert store.client.meta.endpoint_url == moto_endpoint
    assert store.put_bytes("k", b"v") and store.get_bytes("k") == b"v"


def test_s3_missing_credentials_and_bucket_are_clear_errors(
    moto_endpoint: str, s3_env: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    store = open_store("s3://no-such-bucket-here/x")
    with pytest.raises(NotFoundError, match="bucket 'no-such-bucket-here' does not exist"):
        store.put_bytes("k", b"v")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(CredentialsError, match=f"s3://{s3_env}/x: no AWS credentials"):
        open_store(f"s3://{s3_env}/x").get_bytes("k")


def test_push_replicate_pull_verify_through_s3_and_gcs(
    s3_env: str, gcs_env: str, tmp_path: Path, spotshift_home: Path
) -> None:
    src = make_tree(tmp_path / "src")
    w = 4  # the emulator's HTTP server has a listen backlog of 5; real GCS takes the default 16
    s3 = open_store(f"s3://{s3_env}/aws/us-east-1")
    gcs = open_store(f"gs://{gcs_env}/gcp/europe-west4")
    pushed = push(src, s3, "corpus", params=SMALL)
    assert pushed.chunks_sent == pushed.chunks_total
    rep = replicate(
        s3, gcs, "corpus", src_location="aws/us-east-1", dst_location="gcp/europe-west4", workers=w
    )
    assert rep.chunks_sent == pushed.chunks_total and rep.egress_usd_per_gb == 0.09
    assert replicate(s3, gcs, "corpus", workers=w).chunks_sent == 0
    assert verify(gcs, workers=w).ok and verify(s3).ok
    pull(gcs, tmp_path / "out", workers=w)
    assert tree_bytes(tmp_path / "out") == tree_bytes(src)
    # small chunks travel in a few pack files, not one object per chunk
    for store in (s3, gcs):
        assert not list(store.list_keys("chunks/"))
        assert 1 <= len(list(store.list_keys("packs/"))) < pushed.chunks_total / 10
    # a corrupt pack in the cloud store is found and repaired from the other cloud (whose packs
    # are other objects: the repair reads the ranges its own pack index names)
    key = next(k for k in gcs.list_keys("packs/"))
    gcs.put_bytes(key, b"garbage")
    assert not verify(gcs, workers=w).ok
    assert not verify(gcs, full=False, workers=w).ok  # a pack too short for its ranges
    assert verify(gcs, repair_from=s3, workers=w).ok
    assert verify(gcs, workers=w).ok
    pull(gcs, tmp_path / "again", workers=w)
    assert tree_bytes(tmp_path / "again") == tree_bytes(src)


def test_gcs_store_contract(gcs_env: str, tmp_path: Path) -> None:
    contract(open_store(f"gs://{gcs_env}/contract"), tmp_path, write_once_enforced=False)


def test_gcs_without_emulator_or_credentials_is_a_credentials_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")  # no metadata server either
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    with pytest.raises(CredentialsError, match="gs://bucket/x"):
        open_store("gs://bucket/x").get_bytes("k")


def test_local_store_contract(tmp_path: Path) -> None:
    contract(LocalChunkStore(tmp_path / "store"), tmp_path)
    assert os.path.isdir(tmp_path / "store" / "chunks")
    batched = LocalChunkStore(tmp_path / "batched", fsync_each=False)  # durable at flush()
    contract(batched, tmp_path)
    batched.flush()


# ---- issue 11, defect 3: store errors are one line, never credentials ----------------------------
def test_s3_url_with_user_info_is_refused_without_echo_against_moto(
    s3_env: str, tmp_path: Path, spotshift_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import boto3

    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    url = f"s3://AKIALEAKEDKEYID:hunter2@{s3_env}/region"
    assert main(["sync", "push", str(src), url]) == 2
    line = one_clean_line(capsys.readouterr().err)
    assert "credentials in the URL" in line and s3_env in line
    assert boto3.client("s3").list_objects_v2(Bucket=s3_env).get("KeyCount", 0) == 0


def test_s3_server_error_from_moto_names_store_and_status(
    s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spotshift.sync.store_url import open_store

    store = open_store(f"s3://{s3_env}/p")
    with pytest.raises(Exception) as info:
        store.get_bytes("no/such/key")
    assert "not found" in str(info.value)
    missing = open_store("s3://spotshift-no-such-bucket-here/p")
    with pytest.raises(SpotshiftError) as info:
        missing.put_bytes("k", b"v")
    assert_clean(info.value)
