"""Placement scoring: every term on hand-computed cases, and every rejection rule."""

from __future__ import annotations

import pytest

from spotshift.placement.params import PlacementParams
from spotshift.placement.risk import RegionRisk
from spotshift.placement.scoring import DataFootprint, gpu_model_matches, score_candidates, transfer_plan
from tests.unit.placement.builders import make_job, make_quote

GB = 10**9
CENTRAL, EAST, AWS = "gcp/us-central1", "gcp/us-east1", "aws/us-east-1"
FOOT = DataFootprint(
    dataset_bytes=100 * GB,
    checkpoint_bytes=50 * GB,
    dataset_present={CENTRAL: 100 * GB},
    checkpoint_present={CENTRAL: 50 * GB},
)


def by_location(cands):
    return {(c.location, c.market): c for c in cands}


def test_terms_match_hand_computed_values() -> None:
    job = make_job()
    quotes = [
        make_quote(CENTRAL, 10.0),  # no bandwidth penalty: 10 / 8 = 1.25 per GPU-h
        make_quote(EAST, 8.0, net_gbps=190.0),  # (200-190)*0.05 = 0.5 -> 8 * 1.5 / 8 = 1.5
        make_quote(AWS, 32.77, market="on_demand", instance_type="p4d.24xlarge"),
    ]
    risks = {EAST: RegionRisk(EAST, 0.1, 2.0, 100.0, 10)}
    c = by_location(score_candidates(job, quotes, FOOT, remaining_hours=100.0, risks=risks))

    central = c[(CENTRAL, "spot")]
    assert central.effective_gpu_hour_usd == pytest.approx(1.25)
    assert central.transfer_penalty_gpu_hour_usd == 0.0
    # checkpoint already there: 50 GB at 10 Gbit/s = 40 s not spent waiting, at 10 USD/h, over 100 h x 8 GPUs
    assert central.locality_bonus_gpu_hour_usd == pytest.approx((40 / 3600) * 10.0 / 800)
    assert central.score_gpu_hour_usd == pytest.approx(1.25 - (40 / 3600) * 10.0 / 800)
    assert central.risk_gpu_hour_usd == 0.0  # no risk estimate for this location

    east = c[(EAST, "spot")]
    assert east.effective_gpu_hour_usd == pytest.approx(1.5)
    # 150 GB missing, inter-region in North America at 0.02 USD/GB = 3 USD, amortized over 100 h x 8 GPUs
    assert east.transfer.egress_usd == pytest.approx(3.0)
    assert east.transfer.dataset_source == CENTRAL and east.transfer.checkpoint_source == CENTRAL
    assert east.transfer_penalty_gpu_hour_usd == pytest.approx(3.0 / 800)
    assert east.locality_bonus_gpu_hour_usd == 0.0
    assert east.score_gpu_hour_usd == pytest.approx(1.5 + 3.0 / 800)
    # 0.1 preemptions/h x 100 h x 8 USD/h x (0.25 changeover + 0.125 half interval + 40 s restore) / 800
    per_preemption = 8.0 * (0.25 + 0.125 + 40 / 3600)
    assert east.risk_gpu_hour_usd == pytest.approx(0.1 * 100 * per_preemption / 800)
    assert east.expected_gpu_hour_usd == pytest.approx(east.score_gpu_hour_usd + east.risk_gpu_hour_usd)

    aws = c[(AWS, "on_demand")]
    # another cloud: GCP internet egress 0.12 USD/GB x 150 GB = 18 USD
    assert aws.transfer.egress_usd == pytest.approx(18.0)
    assert aws.score_gpu_hour_usd == pytest.approx(32.77 / 8 + 18.0 / 800)

    ranked = [x for x in score_candidates(job, quotes, FOOT, remaining_hours=100.0, risks=risks)]
    assert [(x.location, x.rank) for x in ranked] == [(CENTRAL, 1), (EAST, 2), (AWS, 3)]


def test_seed_amortizes_over_168_hours_when_runtime_unknown() -> None:
    c = score_candidates(make_job(), [make_quote(EAST, 8.0)], FOOT)[0]
    assert c.amortization_hours == 168.0
    assert c.transfer_penalty_gpu_hour_usd == pytest.approx(3.0 / (168 * 8))


def test_rejections_are_explained_and_never_ranked() -> None:
    job = make_job(allowed_locations=["gcp/*", "aws/*"], max_usd_per_hour=40.0)
    quotes = [
        make_quote(CENTRAL, 10.0),
        make_quote(CENTRAL, 5.0, gpu_count=4, instance_type="a2-highgpu-4g"),
        make_quote(EAST, 6.0, topology_score=5.0),
        make_quote("azure/eastus", 4.0),
        make_quote(EAST, 9.0, gpu_model="H100-80GB", instance_type="a3-highgpu-8g"),
        make_quote(AWS, 45.0, market="on_demand", instance_type="p4d.24xlarge"),
        make_quote("gcp/europe-west4", 7.0),
        make_quote("gcp/us-west1", 7.5),
    ]
    cands = score_candidates(
        job,
        quotes,
        FOOT,
        remaining_hours=100.0,
        no_spot={"gcp/europe-west4": "no spot capacity (preempted)"},
        unfit={"gcp/us-west1": "unfit until 2025-03-02: shadow validation failed"},
    )
    eligible = [c for c in cands if c.eligible]
    assert [c.location for c in eligible] == [CENTRAL]
    assert eligible[0].rank == 1
    reasons = {(c.location, c.quote.instance_type): c.rejected for c in cands if not c.eligible}
    assert any("4 GPUs, job needs 8" in r for r in reasons[(CENTRAL, "a2-highgpu-4g")])
    assert any("topology score 5 < 7" in r for r in reasons[(EAST, "a2-highgpu-8g")])
    assert any("not in allowed_locations" in r for r in reasons[("azure/eastus", "a2-highgpu-8g")])
    assert any("GPU H100-80GB is not A100" in r for r in reasons[(EAST, "a3-highgpu-8g")])
    assert any("over max 40" in r for r in reasons[(AWS, "p4d.24xlarge")])
    assert reasons[("gcp/europe-west4", "a2-highgpu-8g")] == ("no spot capacity (preempted)",)
    assert reasons[("gcp/us-west1", "a2-highgpu-8g")] == ("unfit until 2025-03-02: shadow validation failed",)
    assert all(c.rank is None for c in cands if not c.eligible)


def test_spot_rejected_for_on_demand_only_job_and_preemption_only_hits_spot() -> None:
    job = make_job(spot_allowed=False)
    quotes = [make_quote(CENTRAL, 3.0), make_quote(CENTRAL, 10.0, market="on_demand")]
    cands = score_candidates(job, quotes, FOOT, no_spot={CENTRAL: "no spot capacity (preempted)"})
    assert [(c.market, c.eligible) for c in cands] == [("on_demand", True), ("spot", False)]
    assert "spot not allowed for this job" in cands[1].rejected


def test_transfer_plan_uses_cheapest_complete_copy_and_partial_replicas() -> None:
    foot = DataFootprint(
        dataset_bytes=100 * GB,
        checkpoint_bytes=10 * GB,
        # europe holds everything; us-east1 holds a stale replica (70 GB still valid)
        dataset_present={"gcp/europe-west4": 100 * GB, EAST: 70 * GB, "aws/us-east-1": 100 * GB},
        checkpoint_present={"gcp/europe-west4": 10 * GB},
    )
    plan = transfer_plan(foot, EAST)
    assert plan.dataset_bytes == 30 * GB and plan.checkpoint_bytes == 10 * GB
    # AWS -> GCP is internet egress (0.09), europe -> us on GCP is 0.08: the cheaper source wins
    assert plan.dataset_source == "gcp/europe-west4"
    assert plan.egress_usd == pytest.approx(0.08 * 30 + 0.08 * 10)
    assert transfer_plan(DataFootprint(), EAST).egress_usd == 0.0


def test_params_validate_and_transfer_time() -> None:
    p = PlacementParams()
    assert p.transfer_hours(10 * GB) == pytest.approx(8.0 / 3600)
    with pytest.raises(Exception, match="transfer_gbps"):
        PlacementParams(transfer_gbps=0)


@pytest.mark.parametrize(
    ("wanted", "offered", "ok"),
    [
        ("A100", "a100", True),
        ("A100", "A100-40GB", True),
        ("A100-80GB", "a100", False),
        (None, "L4", True),
        ("H100", "A100", False),
    ],
)
def test_gpu_model_matching(wanted, offered, ok) -> None:
    assert gpu_model_matches(wanted, offered) is ok
