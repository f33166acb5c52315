"""``spotshift sync ...`` and ``spotshift datasets ...`` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spotshift import warehouse
from spotshift.cli import main
from spotshift.sync.manifest import Manifest
from tests.unit.sync.conftest import make_tree, tree_bytes

SMALL_OPTS = ["--min-chunk", "16K", "--avg-chunk", "64K", "--max-chunk", "256K"]
KEYS = {"bytes_scanned", "bytes_changed", "chunks_total", "chunks_sent", "bytes_sent", "seconds", "root"}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def src(tmp_path: Path, spotshift_home: Path) -> Path:
    return make_tree(tmp_path / "src")


def test_fingerprint_json_and_manifest_file(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys,
        "sync",
        "fingerprint",
        str(src),
        "--json",
        *SMALL_OPTS,
        "--manifest",
        str(tmp_path / "m.parquet"),
    )
    assert code == 0
    d = last_json(out)
    assert set(d) >= KEYS and d["bytes_scanned"] == d["bytes_total"] > 0 and d["chunks_sent"] == 0
    m = Manifest.from_parquet_bytes((tmp_path / "m.parquet").read_bytes(), name="m", expected_root=d["root"])
    assert m.params.avg_size == 64 * 1024
    code, out, _ = run(capsys, "sync", "fingerprint", str(src), *SMALL_OPTS)
    assert code == 0 and d["root"] in out and "files" in out


@pytest.mark.usefixtures("loose_chunks")
def test_push_pull_verify_repair_cycle(
    src: Path, tmp_path: Path, spotshift_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = (tmp_path / "store").as_uri()
    code, out, _ = run(capsys, "sync", "push", str(src), store, "--dataset", "corpus", "--json", *SMALL_OPTS)
    assert code == 0
    pushed = last_json(out)
    assert (
        set(pushed) >= KEYS
        and pushed["chunks_sent"] == pushed["chunks_total"]
        and pushed["dataset"] == "corpus"
    )
    with warehouse.connect() as con:
        rows = con.execute("select entity, method, bytes_sent, root from raw.transfers").fetchall()
    assert rows == [("corpus", "cdc_delta", pushed["bytes_sent"], pushed["root"])]
    code, out, _ = run(
        capsys, "sync", "push", str(src), store, "--dataset", "corpus", "--json", "--no-record", *SMALL_OPTS
    )
    assert code == 0 and last_json(out)["bytes_sent"] == 0
    code, out, _ = run(capsys, "sync", "pull", store, str(tmp_path / "out"), "--no-record")
    assert code == 0 and "pulled corpus" in out
    assert tree_bytes(tmp_path / "out") == tree_bytes(src)
    assert run(capsys, "sync", "verify", store)[0] == 0
    chunk = next(p for p in (tmp_path / "store" / "chunks").rglob("*") if p.is_file())
    chunk.write_bytes(b"corrupt")
    code, out, _ = run(capsys, "sync", "verify", store)
    assert code == 1 and "FAILED corpus" in out and "1 corrupt" in out
    code, out, err = run(capsys, "sync", "verify", store, "--repair")
    assert code == 2 and err.count("\n") == 1 and "--source" in err and "corpus not declared" in err
    code, out, _ = run(capsys, "sync", "verify", store, "--repair", "--source", str(src), "--json")
    assert code == 0 and last_json(out)["datasets"][0]["repaired"]
    # a declared dataset is repaired from its source without naming it
    chunk.write_bytes(b"corrupt again")
    assert run(capsys, "datasets", "add", "corpus", str(src))[0] == 0
    assert run(capsys, "sync", "verify", store, "--repair")[0] == 0
    assert run(capsys, "sync", "verify", store)[0] == 0
    region = (tmp_path / "region").as_uri()
    code, out, _ = run(capsys, "sync", "replicate", store, region, "--json", "--no-record")
    assert code == 0 and last_json(out)["chunks_sent"] == pushed["chunks_total"]
    # a chunk lost from the replica comes back with --check-existing
    lost = next(p for p in (tmp_path / "region" / "chunks").rglob("*") if p.is_file())
    lost.unlink()
    code, out, _ = run(capsys, "sync", "replicate", store, region, "--json", "--no-record")
    assert last_json(out)["chunks_sent"] == 0  # the replica's snapshot is trusted by default
    code, out, _ = run(
        capsys, "sync", "replicate", store, region, "--json", "--no-record", "--check-existing"
    )
    assert last_json(out)["chunks_sent"] == 1 and run(capsys, "sync", "verify", region)[0] == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sync", "push", "/no/such/dir", "file:///tmp/x"], "/no/such/dir: no such directory"),
        (["sync", "push", ".", "ftp://host/x", "--dataset", "d"], "unsupported scheme 'ftp'"),
        (["sync", "push", ".", "file:///tmp/x", "--dataset", "bad name!"], "dataset name 'bad name!'"),
        (["sync", "fingerprint", ".", "--avg-chunk", "lots"], "size 'lots' is not a number"),
        (["sync", "fingerprint", ".", "--min-chunk", "1M", "--avg-chunk", "64K"], "min <= avg <= max"),
        (["sync", "pull", "file:///no/such/store", "/tmp/out"], "holds no dataset"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, spotshift_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("spotshift: error: ") and err.count("\n") == 1 and message in err


def test_tampered_manifest_pull_names_it(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    code, out, _ = run(capsys, "sync", "push", str(src), store.as_uri(), "--json", "--no-record", *SMALL_OPTS)
    root = last_json(out)["root"]
    manifest = store / "manifests" / f"{root}.parquet"
    manifest.write_bytes(manifest.read_bytes()[:-100])
    code, _, err = run(capsys, "sync", "pull", store.as_uri(), str(tmp_path / "out"))
    assert code == 2 and f"manifests/{root}.parquet" in err and "truncated" in err


def test_datasets_add_and_list(
    tmp_path: Path, spotshift_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    code, out, _ = run(
        capsys, "datasets", "add", "corpus", str(data), "--location", "aws/us-east-1", "--json"
    )
    assert (
        code == 0 and last_json(out)["source"] == str(data) and last_json(out)["engine"] == "pyfastcdc-2020"
    )
    code, out, _ = run(
        capsys,
        "datasets",
        "add",
        "seed",
        data.as_uri(),
        "--min-chunk",
        "2M",
        "--avg-chunk",
        "8M",
        "--max-chunk",
        "16M",
    )
    assert code == 0 and "fastcdc-2016" in out
    code, _, err = run(capsys, "datasets", "add", "corpus", str(data))
    assert code == 2 and "already declared" in err
    code, _, err = run(capsys, "datasets", "add", "x", str(data), "--location", "nowhere")
    assert code == 2 and "provider/region" in err
    code, out, _ = run(capsys, "datasets", "list", "--json")
    assert [d["name"] for d in last_json(out)["datasets"]] == ["corpus", "seed"]
    from spotshift import registry

    assert registry.get("datasets", "corpus")["source"] == str(data)
    # a declared dataset's chunking is used by push
    (data / "f.bin").write_bytes(b"x" * 100_000)
    code, out, _ = run(
        capsys,
        "sync",
        "push",
        str(data),
        (tmp_path / "s").as_uri(),
        "--dataset",
        "seed",
        "--json",
        "--no-record",
    )
    assert last_json(out)["chunks_total"] == 1
    from spotshift.sync.refs import read_ref
    from spotshift.sync.store_url import open_store

    assert read_ref(open_store((tmp_path / "s").as_uri()), "seed").params["engine"] == "fastcdc-2016"  # type: ignore[union-attr]


def test_cached_fingerprint_imports_no_heavy_library(src: Path, spotshift_home: Path) -> None:
    """The timed command line path must not pull in pyarrow, polars, pandas, duckdb or dagster."""
    code = (
        "import sys, time\n"
        "from spotshift.cli import main\n"
        f"main(['sync', 'fingerprint', {str(src)!r}])\n"
        "time.sleep(0.2)\n"
        f"main(['sync', 'fingerprint', {str(src)!r}])\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'pyarrow', 'polars', 'pandas', 'duckdb', 'dagster', 'yaml', 'boto3'})\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
