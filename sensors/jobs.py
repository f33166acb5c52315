"""``declared_jobs_sensor``: keeps the ``jobs`` dynamic partitions equal to the declared training jobs.

``spotshift jobs add`` writes the declarations file; this sensor adds a partition for every newly
declared job (so ``placement_plan`` and the migration chain can run for it). Partitions of jobs
removed from the file are kept: their history stays visible.
"""

import dagster as dg

from assets.partitions import jobs_partitions
from spotshift.jobs import load_jobs


@dg.sensor(
    name="declared_jobs_sensor", minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING
)
def declared_jobs_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    """Add a ``jobs`` partition for each declared job that has none yet."""
    declared = [j.name for j in load_jobs()]
    known = set(context.instance.get_dynamic_partitions(jobs_partitions.name))
    new = [n for n in declared if n not in known]
    if not new:
        return dg.SkipReason(f"all {len(declared)} declared job(s) have partitions")
    return dg.SensorResult(dynamic_partitions_requests=[jobs_partitions.build_add_request(new)])


defs = dg.Definitions(sensors=[declared_jobs_sensor])
