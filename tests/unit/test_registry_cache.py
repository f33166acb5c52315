"""The declarations parse cache (issue 17 item 5): thousands of declarations are parsed once per
content, and any change to the file — by spotshift or by hand — is read at once."""

from __future__ import annotations

from pathlib import Path

from spotshift import registry
from spotshift.home import cache_dir, config_path
from spotshift.jobs import import_jobs, load_jobs
from tests.unit.placement.builders import make_job


def test_declarations_are_parsed_once_per_content_and_edits_are_seen(spotshift_home: Path) -> None:
    registry.upsert("datasets", {"name": "corpus", "location": "gcp/us-central1"})
    import_jobs([make_job(name=f"j{i}") for i in range(3)])
    cached = list((cache_dir() / "declarations").glob("*.pickle"))
    assert len(cached) == 1  # written with the file: the next read parses nothing
    assert [j.name for j in load_jobs()] == ["j0", "j1", "j2"]
    first = registry.load()
    first["jobs"].clear()  # callers get their own copy
    assert len(registry.entries("jobs")) == 3
    # an edit by hand (another content) is seen at once, by load and by load_jobs
    text = config_path().read_text().replace("name: j2", "name: j9")
    config_path().write_text(text)
    assert [e["name"] for e in registry.entries("jobs")] == ["j0", "j1", "j9"]
    assert [j.name for j in load_jobs()] == ["j0", "j1", "j9"]
    # a damaged cache file is ignored (re-parsed and rewritten)
    registry._PARSED.clear()
    for f in (cache_dir() / "declarations").glob("*.pickle"):
        f.write_bytes(b"garbage")
    assert [e["name"] for e in registry.entries("jobs")] == ["j0", "j1", "j9"]
    assert registry.content_digest() == registry.load_keyed()[0] != ""
