"""The control loop's contract between ``inference_autoscale_sensor`` and ``scale_endpoint_job``: a
decision travels as a JSON document and comes back equal; a malformed one is refused in one line."""

from __future__ import annotations

import json

import pytest

from spotshift.errors import ConfigError
from spotshift.serving.autoscale import decide_scaling
from spotshift.serving.control import decision_from_doc, decision_to_doc
from spotshift.serving.scaling_types import ReplicaState
from tests.unit.serving.test_autoscale import inputs, quotes


def test_a_decision_survives_its_json_document() -> None:
    qs = quotes({"gcp/us-east4": 1.0, "gcp/us-central1": 1.1, "gcp/us-east1": 4.0})
    old = (ReplicaState("old-1", "gcp/us-east1", "on_demand", "ready"),)
    decision = decide_scaling(inputs(qs, 9000.0, replicas=old))
    assert decision.launches and decision.user_regions and decision.spot_rules
    doc = json.loads(json.dumps(decision_to_doc(decision)))  # what run config carries
    assert decision_from_doc(doc) == decision


def test_a_malformed_decision_document_is_refused_in_one_line() -> None:
    doc = decision_to_doc(decide_scaling(inputs(quotes({"gcp/us-east4": 1.0}), 3000.0)))
    del doc["launches"]
    with pytest.raises(ConfigError, match="scaling decision document: malformed") as exc:
        decision_from_doc(doc)
    assert "\n" not in str(exc.value)
