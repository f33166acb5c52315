"""The encrypting writer's stored bytes do not depend on how the plaintext is cut or on pipelining."""

from __future__ import annotations

import io
import random

import pytest

from spotshift.checkpoint import crypto


def _encrypt(data: bytes, cuts: list[int], *, pipelined: bool, seg: int = 64) -> tuple[bytes, str, str]:
    out = io.BytesIO()
    w = crypto.EncryptingWriter(
        out, b"k" * 32, part_index=3, part_name="p", segment_bytes=seg, pipelined=pipelined
    )
    at = 0
    for c in [*cuts, len(data)]:
        w.write(data[at:c])
        at = c
    w.close()
    assert w.plain_bytes == len(data) and w.stored_bytes == len(out.getvalue())
    return out.getvalue(), w.plain_hash.hexdigest(), w.stored_hash.hexdigest()


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 128, 1000])
def test_any_cutting_and_pipelining_store_the_same_bytes(size: int) -> None:
    rng = random.Random(size)
    data = rng.randbytes(size)
    want = _encrypt(data, [], pipelined=False)
    assert len(want[0]) == crypto.stored_size(size, 64)
    for _ in range(20):
        cuts = sorted(rng.randint(0, size) for _ in range(rng.randint(0, 6)))
        assert _encrypt(data, cuts, pipelined=rng.random() < 0.5) == want
    plain = b"".join(
        crypto.iter_decrypt(
            io.BytesIO(want[0]),
            b"k" * 32,
            part_index=3,
            part_name="p",
            segment_bytes=64,
            plain_bytes=size,
            what="t",
        )
    )
    assert plain == data


def test_a_failing_sink_fails_the_pipelined_writer() -> None:
    class Full(io.BytesIO):
        def write(self, data: object) -> int:
            if self.tell() > 200:
                raise OSError(28, "No space left on device")
            return super().write(data)  # type: ignore[arg-type]

    w = crypto.EncryptingWriter(
        Full(), b"k" * 32, part_index=0, part_name="p", segment_bytes=64, pipelined=True
    )
    with pytest.raises(OSError, match="No space"):
        w.write(b"x" * 64 * 20)
        w.close()
    w.abort()
