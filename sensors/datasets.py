"""Keep the ``datasets`` partitions in step with the declarations file, and fingerprint new datasets.

``dataset_registry_sensor`` adds a ``datasets`` partition for every declared dataset and a
``regions`` partition for its home location, and requests one ``dataset_fingerprints`` run per
declaration it has not seen (run key = dataset + hash of its declaration, so a re-evaluated tick
never starts a second run, and changing a dataset's source or chunking fingerprints it again).
Partitions of datasets removed from the file are kept (their history stays visible).
"""

import hashlib
import json

import dagster as dg

from assets.datasets import dataset_fingerprints
from assets.partitions import datasets_partitions, regions_partitions


def _declaration_id(decl: dict) -> str:
    return hashlib.sha256(json.dumps(decl, sort_keys=True).encode()).hexdigest()[:16]


@dg.sensor(
    name="dataset_registry_sensor",
    target=[dataset_fingerprints],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a datasets partition per declared dataset (spotshift datasets add) and fingerprints it.",
)
def dataset_registry_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    from spotshift.errors import SpotshiftError
    from spotshift.sync.datasets import load_datasets

    try:
        declared = load_datasets()
    except SpotshiftError as exc:
        return dg.SkipReason(f"declarations not readable: {exc}")
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    have_datasets = set(context.instance.get_dynamic_partitions(datasets_partitions.name))
    have_regions = set(context.instance.get_dynamic_partitions(regions_partitions.name))
    new_datasets = sorted({d.name for d in declared} - have_datasets)
    new_regions = sorted({d.location for d in declared} - have_regions)
    requests = []
    current: dict[str, str] = {}
    for d in declared:
        ident = _declaration_id(d.to_dict())
        current[d.name] = ident
        if seen.get(d.name) != ident:
            requests.append(
                dg.RunRequest(run_key=f"dataset_fingerprints:{d.name}:{ident}", partition_key=d.name)
            )
    partition_requests = []
    if new_datasets:
        partition_requests.append(datasets_partitions.build_add_request(new_datasets))
    if new_regions:
        partition_requests.append(regions_partitions.build_add_request(new_regions))
    if not requests and not partition_requests:
        return dg.SkipReason(f"{len(declared)} declared datasets, all known")
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=partition_requests,
        cursor=json.dumps({**seen, **current}, sort_keys=True),
    )


defs = dg.Definitions(sensors=[dataset_registry_sensor])
