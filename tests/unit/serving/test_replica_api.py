"""The replica <-> router contract: request validation, response shape, the registry file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from spotshift.errors import ConfigError, InputError
from spotshift.serving import replica_api as api


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("SPOTSHIFT_HOME", str(tmp_path))


def _record(rid: str = "r1", pid: int | None = None, **kw) -> api.ReplicaRecord:
    base = dict(
        replica_id=rid,
        endpoint="chat",
        url="http://127.0.0.1:1",
        location="gcp/us-central1",
        market="spot",
        price_usd_per_hour=1.5,
        pid=pid if pid is not None else os.getpid(),
        started_at_s=0.0,
        checkpoint="abc",
    )
    base.update(kw)
    return api.ReplicaRecord(**base)


def test_request_defaults_and_validation():
    req = api.parse_completion_request({"prompt": "hi", "model": "x"})
    assert req == api.CompletionRequest(prompt="hi", max_tokens=16, temperature=0.0)
    for bad, word in [
        ([], "JSON object"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "a", "max_tokens": True}, "max_tokens"),
        ({"prompt": "a", "max_tokens": api.MAX_COMPLETION_TOKENS + 1}, "max_tokens"),
        ({"prompt": "a", "temperature": 0.7}, "greedy"),
        ({"prompt": "a", "stream": True}, "unknown field"),
    ]:
        with pytest.raises(InputError, match=word):
            api.parse_completion_request(bad)


def test_response_shape():
    body = api.completion_response(
        completion_id="cmpl-1", created_s=5, model="chat", text="abc", prompt_tokens=2, completion_tokens=3
    )
    assert body["choices"][0]["text"] == "abc"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def test_register_drain_deregister_roundtrip():
    api.register(_record("r1"))
    api.register(_record("r2", market="reserved"))
    assert [r.replica_id for r in api.live_replicas("chat")] == ["r1", "r2"]
    api.set_state("chat", "r1", "draining")
    assert [r.replica_id for r in api.live_replicas("chat")] == ["r2"]
    assert len(api.live_replicas("chat", include_draining=True)) == 2
    api.deregister("chat", "r1")
    assert set(api.read_registry("chat")) == {"r2"}
    doc = json.loads(api.registry_path("chat").read_text())
    assert doc["endpoint"] == "chat" and set(doc["replicas"]) == {"r2"}


def test_dead_process_records_are_skipped_and_pruned():
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    api.register(_record("gone", pid=dead_pid))
    assert api.live_replicas("chat") == []
    api.register(_record("alive"))
    assert set(api.read_registry("chat")) == {"alive"}


def test_bad_names_and_markets_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="endpoint name"):
        api.registry_path("../etc")
    with pytest.raises(ConfigError, match="market"):
        _record(market="preemptible")
    api.registry_path("chat").parent.mkdir(parents=True)
    api.registry_path("chat").write_text("{not json")
    with pytest.raises(ConfigError, match="not a replica registry"):
        api.read_registry("chat")
