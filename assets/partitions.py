"""Partitions shared by the asset modules (DESIGN §2: DynamicPartitions for datasets and jobs,
MultiPartitions entity x region for replicas). Region keys are ``provider/region`` locations."""

from __future__ import annotations

import dagster as dg

datasets_partitions = dg.DynamicPartitionsDefinition(name="datasets")
jobs_partitions = dg.DynamicPartitionsDefinition(name="jobs")
regions_partitions = dg.DynamicPartitionsDefinition(name="regions")

dataset_region_partitions = dg.MultiPartitionsDefinition(
    {"dataset": datasets_partitions, "region": regions_partitions}
)
job_region_partitions = dg.MultiPartitionsDefinition({"job": jobs_partitions, "region": regions_partitions})

endpoints_partitions = dg.DynamicPartitionsDefinition(name="endpoints")
