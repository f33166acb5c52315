"""Which checkpoint a replica of a job's model serves: the job's newest, wherever the replica runs.

A region the job left may still hold its older checkpoints; a replica there must not answer with
them while the endpoint's other replicas serve the newest (the cutover's shadow comparison would
see two different models, and users would get different answers by region)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from spotshift.checkpoint.format import list_checkpoints, step_of
from spotshift.cli import main
from spotshift.serving.model_host import load_served_model
from spotshift.sync.store_url import open_store
from tests.training_support import declare_tiny_job

pytest.importorskip("torch")

GCP, AWS = "gcp/us-central1", "aws/us-east-1"


def test_a_replica_in_a_region_with_older_checkpoints_serves_the_jobs_newest(spotshift_home: Path) -> None:
    declare_tiny_job(spotshift_home, total_steps=400, every=20)
    assert main(["train", "tiny", "--location", GCP, "--steps", "40"]) == 0
    gcp = spotshift_home / "stores" / "gcp" / "us-central1" / "checkpoints" / "tiny"
    ids = list_checkpoints(open_store(str(gcp.parents[1])), "tiny")
    assert [step_of(i) for i in ids] == [20, 40]
    old = spotshift_home / "stores" / "aws" / "us-east-1" / "checkpoints" / "tiny" / ids[0]
    shutil.copytree(gcp / ids[0], old)  # the job trained in AWS once, and left
    in_aws = load_served_model("tiny", AWS)
    assert in_aws.checkpoint_id == ids[-1] == load_served_model("tiny", GCP).checkpoint_id
    shutil.copytree(gcp / ids[-1], old.parent / ids[-1])  # replicated: read from the replica's own store
    assert load_served_model("tiny", AWS).label.endswith(f" in file://{old.parents[2]}")
