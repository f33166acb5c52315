"""``hibernate_job``: apply an idle dev/test environment's policy (hibernate, or downsize to CPU).

One op calling :func:`spotshift.devenvs.runtime.act_on_idle`, which re-checks idleness first, so a
run requested for an environment that became active again (or was already hibernated) does nothing.
"""

from typing import Any

import dagster as dg

from spotshift.clock import virtual_now
from spotshift.devenvs.runtime import act_on_idle


class HibernateConfig(dg.Config):
    devenv: str


@dg.op(out=dg.Out(dict, description="the environment's state after the policy applied"))
def hibernate_devenv(context: dg.OpExecutionContext, config: HibernateConfig) -> dict[str, Any]:
    doc = act_on_idle(config.devenv, now=virtual_now())
    last = doc["events"][-1] if doc["events"] else {}
    context.add_output_metadata(
        {"devenv": config.devenv, "status": doc["status"], "last_event": dg.MetadataValue.json(last)}
    )
    return {k: v for k, v in doc.items() if k != "events"}


@dg.job(description="Hibernate (or downsize to CPU, per its policy) an idle dev/test environment.")
def hibernate_job() -> None:
    hibernate_devenv()


defs = dg.Definitions(jobs=[hibernate_job])
