"""The Kubernetes deployment files (issue 17 item 8): parsed and checked, since no cluster runs here.

* the Dockerfile copies every top-level package ``definitions.py`` imports, installs the project
  with its ``serving`` extra, parses the dbt project and serves ``definitions.py`` on the port the
  Helm values declare, as a non-root user;
* the Helm values run that image as the user deployment, keep runs in an external PostgreSQL whose
  password comes from a secret (no password anywhere in the file), use a run launcher the official
  chart knows, and limit runs per training job like ``spotshift home init`` does.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import yaml

from spotshift.instance import Storage, render

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
VALUES = REPO / "deploy" / "helm" / "values.yaml"


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _local_imports() -> set[str]:
    tree = ast.parse((REPO / "definitions.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return {n for n in names if (REPO / n).is_dir() or (REPO / f"{n}.py").is_file()}


def _walk(doc: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(doc, dict):
        return [kv for k, v in doc.items() for kv in _walk(v, f"{path}.{k}")]
    if isinstance(doc, list):
        return [kv for i, v in enumerate(doc) for kv in _walk(v, f"{path}[{i}]")]
    return [(path, doc)]


def test_dockerfile_builds_the_code_location_it_serves() -> None:
    ins = _instructions()
    assert ins[0][0] == "FROM" and ins[0][1].startswith("python:3.11")
    copied = set()
    for word, rest in ins:
        if word == "COPY":
            copied |= {Path(p).name for p in rest.split()[:-1]}
    for name in _local_imports() | {"recording", "spotshift"}:
        assert name in copied or f"{name}.py" in copied, (
            f"{name} is imported by definitions.py but not copied"
        )
    for p in copied:
        assert (REPO / p).exists(), f"COPY {p}: no such file in the repository"
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    assert "pip install" in runs and "'.[serving,workers]'" in runs and "dbt parse" in runs
    user = [rest for word, rest in ins if word == "USER"]
    assert user and user[-1] not in ("root", "0")
    cmd = yaml.safe_load([rest for word, rest in ins if word == "CMD"][-1])
    assert cmd[:3] == ["dagster", "code-server", "start"] and cmd[cmd.index("-f") + 1] == "definitions.py"
    expose = [int(rest) for word, rest in ins if word == "EXPOSE"]
    assert expose == [int(cmd[cmd.index("-p") + 1])]


def test_helm_values_run_the_image_on_postgres_without_secrets() -> None:
    values = yaml.safe_load(VALUES.read_text())
    (dep,) = values["dagster-user-deployments"]["deployments"]
    ins = _instructions()
    cmd = yaml.safe_load([rest for word, rest in ins if word == "CMD"][-1])
    assert dep["port"] == int(cmd[cmd.index("-p") + 1])
    assert dep["dagsterApiGrpcArgs"] == ["-f", "definitions.py"] and (REPO / "definitions.py").is_file()
    assert {"name": "spotshift-postgres"} in dep["envSecrets"]
    # storage: an external PostgreSQL, the password from a secret
    assert values["postgresql"]["enabled"] is False and values["postgresql"]["postgresqlHost"]
    assert values["global"]["postgresqlSecretName"] == "spotshift-postgres"
    assert values["generatePostgresqlPasswordSecret"] is False
    leaks = [
        p
        for p, v in _walk(values)
        if re.search(r"password|secret_?key|token", p, re.I) and isinstance(v, str) and v
    ]
    assert leaks == [], leaks
    assert values["runLauncher"]["type"] in ("K8sRunLauncher", "CeleryK8sRunLauncher")
    assert values["telemetry"]["enabled"] is False
    # one run per training job at a time: the same limit as the instance `spotshift home init` writes
    ours = yaml.safe_load(render(Storage("postgres", "db", 5432, "dagster", "dagster")))
    coord = values["dagsterDaemon"]["runCoordinator"]
    assert coord["type"] == ours["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert (
        coord["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
        == ours["run_coordinator"]["config"]["tag_concurrency_limits"]
    )


def test_worker_pools_serve_one_region_queue_each_with_the_values_broker() -> None:
    from spotshift.cli import build_parser
    from spotshift.pricing.regions import check_location

    WORKERS = REPO / "deploy" / "workers.yaml"
    values = yaml.safe_load(VALUES.read_text())
    (dep,) = values["dagster-user-deployments"]["deployments"]
    code_env = {e["name"]: e["value"] for e in dep["env"]}
    assert code_env["SPOTSHIFT_EXECUTOR"] == "celery"
    launcher = dict(v.split("=", 1) for v in values["runLauncher"]["config"]["k8sRunLauncher"]["envVars"])
    assert launcher["SPOTSHIFT_CELERY_BROKER"] == code_env["SPOTSHIFT_CELERY_BROKER"]
    served = []
    for doc in yaml.safe_load_all(WORKERS.read_text()):
        assert doc["kind"] == "Deployment"
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        cmd = container["command"]
        args = build_parser("workers").parse_args(cmd[1:])  # the CLI accepts the container's command
        assert cmd[0] == "spotshift" and args.workers_command == "run"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["SPOTSHIFT_EXECUTOR"] == "celery"
        assert env["SPOTSHIFT_CELERY_BROKER"] == code_env["SPOTSHIFT_CELERY_BROKER"]
        assert not [k for k, v in env.items() if re.search(r"password", k, re.I) and v], "a password inline"
        assert container["image"] == f"{dep['image']['repository']}:{dep['image']['tag']}"
        if args.region:
            check_location(args.region)
            region = args.region.split("/")[1]
            assert doc["spec"]["template"]["spec"]["nodeSelector"]["topology.kubernetes.io/region"] == region
            assert doc["spec"]["replicas"] >= 2  # a killed worker's step goes to the other one
        served.append(args.region or "control")
    assert "control" in served and len(served) == len(set(served)) >= 3
