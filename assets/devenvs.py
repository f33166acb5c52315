"""``devenvs``: every declared dev/test environment, its status, idle time and the waste avoided per team.

Materializing samples each running environment's activity (CPU use of its processes, heartbeat
file, requests served) and reports idle GPU-hours not paid per team (seed 001, "AI Dev/Test
Environment Cost Governance"). Acting on idleness is ``idle_downsize_sensor`` + ``hibernate_job``.
The library does the work: :mod:`spotshift.devenvs.runtime`.
"""

import dagster as dg

from spotshift.clock import virtual_now
from spotshift.devenvs.activity import observe
from spotshift.devenvs.env import load_devenvs
from spotshift.devenvs.runtime import waste_report
from spotshift.devenvs.state import load_env_state


@dg.asset(group_name="devenvs", kinds={"python"}, description=__doc__)
def devenvs(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    now = virtual_now()
    rows = []
    for env in load_devenvs():
        act = observe(env.name, now=now)
        doc = load_env_state(env.name)
        rows.append(
            {
                "name": env.name,
                "team": env.team,
                "status": doc["status"],
                "location": doc.get("location", ""),
                "idle_hours": round(act.idle_hours, 3),
                "idle_limit_hours": env.idle_hours,
            }
        )
    rep = waste_report(now=now)
    context.log.info(f"{len(rows)} dev environments; teams: {sorted(rep['teams'])}")
    return dg.MaterializeResult(
        metadata={
            "environments": dg.MetadataValue.json(rows),
            "waste_avoided_by_team": dg.MetadataValue.json(rep["teams"]),
            "idle_gpu_hours_avoided": float(sum(t["gpu_hours"] for t in rep["teams"].values())),
            "usd_avoided": float(sum(t["usd"] for t in rep["teams"].values())),
        }
    )


defs = dg.Definitions(assets=[devenvs])
