"""Chunking engines, parameters and digests."""

from __future__ import annotations

import hashlib
import io

import blake3
import pytest

from spotshift.errors import ConfigError
from spotshift.sync.chunking import (
    FASTCDC,
    PYFASTCDC,
    ChunkParams,
    digest_function,
    iter_chunks,
    iter_mapped_chunks,
    parse_size,
)
from tests.unit.sync.conftest import rand_bytes

KiB, MiB = 1024, 1024 * 1024


def cut(data: bytes, params: ChunkParams) -> list[bytes]:
    return [bytes(c) for c in iter_chunks(io.BytesIO(data), params)]


def test_defaults_are_the_fastest_engine_and_documented_sizes() -> None:
    p = ChunkParams()
    assert (p.engine, p.min_size, p.avg_size, p.max_size, p.digest) == (
        PYFASTCDC,
        1 * MiB,
        4 * MiB,
        16 * MiB,
        "blake3-128",
    )
    assert ChunkParams.from_key(p.key) == p
    assert hash(ChunkParams.from_key(p.key)) == hash(p)
    with pytest.raises(AttributeError):
        p.min_size = 5  # type: ignore[misc]


def test_seed_parameters_pick_the_fastcdc_engine() -> None:
    seed = ChunkParams.resolve(2 * MiB, 8 * MiB, 16 * MiB)
    assert seed.engine == FASTCDC
    assert ChunkParams.resolve(16 * KiB, 64 * KiB, 256 * KiB).engine == PYFASTCDC
    assert ChunkParams.resolve(avg_size=64 * KiB) == ChunkParams(16 * KiB, 64 * KiB, 256 * KiB)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_size": 10, "avg_size": 5, "max_size": 20}, "min <= avg <= max"),
        ({"min_size": 2 * MiB, "avg_size": 8 * MiB, "max_size": 16 * MiB, "engine": PYFASTCDC}, "outside"),
        ({"engine": "zstd"}, "engine"),
        ({"digest": "md5"}, "digest"),
        ({"min_size": "1"}, "integer"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ChunkParams(**kwargs)


@pytest.mark.parametrize("engine", [PYFASTCDC, FASTCDC])
def test_chunks_cover_the_stream_and_respect_bounds(engine: str) -> None:
    p = ChunkParams(16 * KiB, 64 * KiB, 256 * KiB, engine)
    data = rand_bytes(5 * MiB + 123, 1)
    chunks = cut(data, p)
    assert b"".join(chunks) == data
    assert all(len(c) <= p.max_size for c in chunks)
    assert all(len(c) >= p.min_size for c in chunks[:-1])
    assert 20 < len(chunks) < 200
    assert cut(b"", p) == []


def test_fastcdc_streaming_window_matches_whole_buffer_cutting() -> None:
    """The sliding window over a stream must cut exactly where fastcdc cuts the whole buffer."""
    from fastcdc.fastcdc_cy import fastcdc_cy

    p = ChunkParams(64 * KiB, 256 * KiB, 1 * MiB, FASTCDC)
    data = rand_bytes(70 * MiB, 2)  # larger than the 32 MiB window
    whole = [c.length for c in fastcdc_cy(data, p.min_size, p.avg_size, p.max_size, False, None)]
    assert [len(c) for c in cut(data, p)] == whole


@pytest.mark.parametrize("engine", [PYFASTCDC, FASTCDC])
def test_an_edit_moves_only_nearby_chunks(engine: str) -> None:
    p = ChunkParams(16 * KiB, 64 * KiB, 256 * KiB, engine)
    data = rand_bytes(8 * MiB, 3)
    edited = data[: 3 * MiB] + b"inserted bytes" + data[3 * MiB :]
    h = digest_function(p.digest)
    before = {h(c) for c in cut(data, p)}
    after = [h(c) for c in cut(edited, p)]
    new = [d for d in after if d not in before]
    assert 1 <= len(new) <= 3  # content-defined: boundaries resynchronise after the edit


def test_digests() -> None:
    data = b"spotshift"
    assert digest_function("blake3-128")(data) == blake3.blake3(data).digest(16)
    assert digest_function("blake2b-128")(data) == hashlib.blake2b(data, digest_size=16).digest()
    assert len(digest_function("blake3-128")(b"")) == 16


def test_parse_size() -> None:
    assert parse_size("64K") == 64 * KiB
    assert parse_size("8MiB") == 8 * MiB
    assert parse_size("1048576") == MiB
    assert parse_size("1.5m") == int(1.5 * MiB)
    for bad in ("", "abc", "-5", "0"):
        with pytest.raises(ConfigError):
            parse_size(bad)


@pytest.mark.parametrize("engine", [PYFASTCDC, FASTCDC])
def test_cutting_in_place_matches_the_stream(engine: str) -> None:
    p = ChunkParams.resolve(1024, 4096, 16384, engine=engine)
    for size in (0, 1, 1023, 5000, 200_000):
        data = rand_bytes(size, size)
        assert [bytes(c) for c in iter_mapped_chunks(memoryview(data), p)] == cut(data, p)
