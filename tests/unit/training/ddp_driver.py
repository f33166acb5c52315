"""examples/train_ddp.py under torchrun with two test hooks: rank 1 is slow to put its shard in place
(``DDP_TEST_SLOW_S``) and rank 0 records which files the checkpoint directory held when it wrote
``COMMIT`` (``DDP_TEST_SEEN``, one JSON line per commit)."""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
from pathlib import Path
from typing import Any

from spotshift.checkpoint import sharded
from spotshift.checkpoint.codec import checkpoint_prefix

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "train_ddp.py"
RANK = int(os.environ["RANK"])

if RANK == 1 and os.environ.get("DDP_TEST_SLOW_S"):
    _place = sharded.Staging.place

    def _slow_place(self: Any, job: str, ckpt_id: str, names: list[str]) -> None:
        time.sleep(float(os.environ["DDP_TEST_SLOW_S"]))
        _place(self, job, ckpt_id, names)

    sharded.Staging.place = _slow_place  # type: ignore[method-assign]

if RANK == 0 and os.environ.get("DDP_TEST_SEEN"):
    _commit = sharded.commit_checkpoint

    def _recording_commit(store: Any, job: str, ckpt_id: str, *args: Any, **kwargs: Any) -> bool:
        files = sorted(os.listdir(store.root / checkpoint_prefix(job, ckpt_id)))
        with open(os.environ["DDP_TEST_SEEN"], "a") as f:
            f.write(json.dumps({"checkpoint_id": ckpt_id, "files": files}) + "\n")
        return _commit(store, job, ckpt_id, *args, **kwargs)

    sharded.commit_checkpoint = _recording_commit

sys.path.insert(0, str(EXAMPLE.parent))  # what running the example as a script puts first
sys.argv = [str(EXAMPLE), *sys.argv[1:]]
runpy.run_path(str(EXAMPLE), run_name="__main__")
