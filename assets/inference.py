"""Inference endpoints as assets: ``inference_endpoints`` (an endpoint's replicas per region and their
state) and ``traffic_policy`` (the routing weights and why), one partition per declared endpoint.
The library computes both (:mod:`spotshift.serving.control`); these bodies record its results."""

from collections import Counter

import dagster as dg

from assets.partitions import endpoints_partitions
from resources.compute import ReplicaLauncherResource
from spotshift.serving.control import endpoint_inventory, endpoint_traffic_policy
from spotshift.serving.endpoints import get_endpoint


@dg.asset(partitions_def=endpoints_partitions, group_name="inference", kinds={"python"})
def inference_endpoints(
    context: dg.AssetExecutionContext, launcher: ReplicaLauncherResource
) -> dg.MaterializeResult:
    """The endpoint's replicas per region (``provider/region``): ready, draining, provisioning."""
    ep = get_endpoint(context.partition_key)
    regions = endpoint_inventory(ep.name, launcher.launcher())
    states = Counter(r["state"] for rows in regions.values() for r in rows)
    markets = Counter(r["market"] for rows in regions.values() for r in rows)
    return dg.MaterializeResult(
        metadata={
            "endpoint": ep.name,
            "slo_ms": ep.slo_ms,
            "regions": len(regions),
            "replicas": sum(len(rows) for rows in regions.values()),
            **{f"{s}_replicas": states.get(s, 0) for s in ("ready", "draining", "provisioning")},
            **{f"{m}_replicas": markets.get(m, 0) for m in ("spot", "on_demand", "reserved")},
            "by_region": dg.MetadataValue.json(regions),
        }
    )


@dg.asset(
    partitions_def=endpoints_partitions, group_name="inference", deps=[inference_endpoints], kinds={"python"}
)
def traffic_policy(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """The router's rule as weights for the endpoint's user mix: share, cost per million tokens,
    predicted latency per user region and the reasons, per replica; user regions outside the SLO."""
    policy = endpoint_traffic_policy(get_endpoint(context.partition_key))
    doc = policy.to_dict()
    return dg.MaterializeResult(
        metadata={
            "endpoint": policy.endpoint,
            "replicas": len(policy.weights),
            "weights": dg.MetadataValue.json({w.replica_id: w.weight for w in policy.weights}),
            "violations": dg.MetadataValue.json(list(policy.violations)),
            "policy": dg.MetadataValue.json(doc),
        }
    )


defs = dg.Definitions(assets=[inference_endpoints, traffic_policy])
