"""``idle_downsize_sensor``: request ``hibernate_job`` for dev/test environments idle past their limit.

Each evaluation samples every running environment (:func:`spotshift.devenvs.runtime.idle_candidates`).
The run key is ``<devenv>:<last activity time>``: one idle spell is acted on once, however often the
sensor re-evaluates, and a new spell after a resume gets a new key.
"""

import dagster as dg

from ops.devenvs import hibernate_job
from spotshift.clock import virtual_now
from spotshift.devenvs.runtime import idle_candidates
from spotshift.devenvs.state import load_env_state


@dg.sensor(job=hibernate_job, minimum_interval_seconds=300, description=__doc__)
def idle_downsize_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    del context
    requests = []
    for act in idle_candidates(now=virtual_now()):
        spell = load_env_state(act.name).get("last_active_at", "")
        requests.append(
            dg.RunRequest(
                run_key=f"{act.name}:{spell}",
                run_config={"ops": {"hibernate_devenv": {"config": {"devenv": act.name}}}},
                tags={"spotshift/devenv": act.name},
            )
        )
    if not requests:
        return dg.SkipReason("no dev environment idle past its limit")
    return dg.SensorResult(run_requests=requests)


defs = dg.Definitions(sensors=[idle_downsize_sensor])
