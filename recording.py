"""Dagster-only glue: the asset keys of the move chain, and how a step's typed result is recorded.

The library (:mod:`spotshift.migration`) does each step and returns a typed result; an asset or
an op calls one step and records the result with the builders here, so an asset key's
materialization is written one way whether the asset itself or a migration op produced it:

* :func:`move_env` — the step environment from a run's resources;
* ``*_metadata`` — materialization metadata of each result;
* :func:`replica_check`, :func:`shadow_checks` — asset check results converted from the library's
  verdicts (:func:`spotshift.training.shadow.verdicts`); :func:`check_evaluation` records one from
  an op, for the partition it touched;
* :func:`config_schema` — an op's config schema from the library dataclasses it builds.

``assets/`` and ``ops/`` import this module; it imports neither.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import dagster as dg

from spotshift.migration.state import MoveEnv
from spotshift.training.shadow import ShadowComparison, ShadowVerdict
from spotshift.units import usd

DATASET_FINGERPRINTS = dg.AssetKey("dataset_fingerprints")
DATASET_REPLICAS = dg.AssetKey("dataset_replicas")
CHECKPOINTS = dg.AssetKey("checkpoints")
CHECKPOINT_REPLICAS = dg.AssetKey("checkpoint_replicas")
RETRAIN_RUN = dg.AssetKey("retrain_run")
SHADOW_VALIDATION = dg.AssetKey("shadow_validation")

#: the asset check names of dataset_replicas and shadow_validation
REPLICA_CHECK = "replica_matches_fingerprint"


def move_env(context: Any) -> MoveEnv:
    """The step environment of a run: whichever of ``compute``, ``stores``, ``keys`` and
    ``warehouse`` its resources hold (a step that needs a missing one fails naming it)."""
    res = context.resources

    def missing(name: str) -> Any:
        def fail(*_: Any) -> Any:
            raise dg.Failure(f"this step needs the resource {name!r}")

        return fail

    compute = getattr(res, "compute", None)
    stores = getattr(res, "stores", None)
    keys = getattr(res, "keys", None)
    warehouse = getattr(res, "warehouse", None)
    return MoveEnv(
        backend=compute.backend() if compute is not None else None,
        store_for=stores.store_for if stores is not None else missing("stores"),
        key_provider=keys.provider if keys is not None else missing("keys"),
        key_spec=keys.spec_or_none() if keys is not None else None,
        database=warehouse.database if warehouse is not None else None,
        run_id=context.run.run_id,
        log=context.log.info,
    )


# --- metadata --------------------------------------------------------------------------------------


def transfer_metadata(stats: Any) -> dict[str, Any]:
    """Metadata of a dataset transfer (:class:`~spotshift.sync.transfer.TransferStats`)."""
    meta: dict[str, Any] = {
        "root": stats.root,
        "bytes_full": dg.MetadataValue.int(stats.bytes_full),
        "bytes_scanned": dg.MetadataValue.int(stats.bytes_scanned),
        "bytes_changed": dg.MetadataValue.int(stats.bytes_changed),
        "bytes_sent": dg.MetadataValue.int(stats.bytes_sent),
        "chunks_total": dg.MetadataValue.int(stats.chunks_total),
        "chunks_sent": dg.MetadataValue.int(stats.chunks_sent),
        "seconds": dg.MetadataValue.float(round(stats.seconds, 3)),
        "egress_usd": dg.MetadataValue.float(usd(stats.egress_usd) or 0.0),
        "store": dg.MetadataValue.url(stats.dst) if "://" in stats.dst else stats.dst,
    }
    if stats.transfer_amplification is not None:
        meta["transfer_amplification"] = dg.MetadataValue.float(round(stats.transfer_amplification, 4))
    return meta


def fingerprint_metadata(result: Any) -> dict[str, Any]:
    """``dataset_fingerprints`` metadata of a :class:`~spotshift.migration.steps.FingerprintResult`."""
    s = result.summary
    return {
        **transfer_metadata(result.transfer),
        "files": dg.MetadataValue.int(s["files"]),
        "bytes": dg.MetadataValue.int(s["bytes"]),
        "chunks": dg.MetadataValue.int(s["chunks"]),
        "unique_chunks": dg.MetadataValue.int(s["unique_chunks"]),
        "bytes_read": dg.MetadataValue.int(result.bytes_read),
        "cache_hits": dg.MetadataValue.int(result.cache_hits),
        "location": result.location,
        "source": result.source,
        "chunking": dg.MetadataValue.json(result.chunking),
    }


def replica_metadata(result: Any) -> dict[str, Any]:
    """``dataset_replicas`` metadata of a :class:`~spotshift.migration.steps.ReplicaResult`."""
    return {
        **transfer_metadata(result.transfer),
        "src_location": result.src_location,
        "dst_location": result.region,
    }


def checkpoint_metadata(ref: dict[str, Any] | None) -> dict[str, Any]:
    """Metadata of a checkpoint ref (``checkpoints``, ``retrain_run``)."""
    if not ref:
        return {}
    return {
        "checkpoint_id": ref["checkpoint_id"],
        "step": ref["step"],
        "content_hash": ref["content_hash"],
        "url": dg.MetadataValue.url(ref["url"]) if "://" in ref["url"] else ref["url"],
        "store": ref["store_url"],
    }


def checkpoints_metadata(
    mode: str,
    location: str,
    ref: dict[str, Any] | None,
    *,
    steps_run: int = 0,
    skipped: list[Any] | None = None,
) -> dict[str, Any]:
    """``checkpoints`` metadata: how the job was advanced (run | latest | stopped) and where, and the
    checkpoint it ended with (the asset and the migration's drain record it the same way)."""
    meta = {"mode": mode, "location": location, "steps_run": steps_run, **checkpoint_metadata(ref)}
    if skipped:
        meta["skipped_checkpoints"] = dg.MetadataValue.json(skipped)
    return meta


def carry_metadata(result: Any) -> dict[str, Any]:
    """``checkpoint_replicas`` metadata of a :class:`~spotshift.migration.steps.CarryResult`."""
    r = result.report
    return {
        "method": r.method,
        "checkpoint_id": r.checkpoint_id,
        "step": r.step,
        "content_hash": r.content_hash,
        "source_location": r.src_location or "",
        "base": r.base or "",
        "bytes_full": r.bytes_full,
        "bytes_sent": r.bytes_sent,
        "egress_usd": dg.MetadataValue.float(usd(result.egress_usd) or 0.0),
        "ratio": round(r.ratio, 6),
        "seconds": round(r.seconds, 4),
    }


def retrain_metadata(result: Any) -> dict[str, Any]:
    """``retrain_run`` metadata of a :class:`~spotshift.migration.steps.RetrainResult`."""
    skip = ("job", "checkpoint", "probation")
    meta = {
        f.name: getattr(result, f.name)
        for f in dataclasses.fields(result)
        if f.name not in skip and getattr(result, f.name) not in (None, "")
    }
    for k in ("seconds", "seconds_to_first_step"):
        if k in meta:
            meta[k] = round(meta[k], 3)
    return {**meta, **checkpoint_metadata(result.checkpoint)}


def shadow_metadata(cmp: ShadowComparison) -> dict[str, Any]:
    """``shadow_validation`` metadata: the comparison, with both loss curves as one JSON value."""
    meta = {k: v for k, v in cmp.to_dict().items() if k not in ("source_losses", "target_losses")}
    meta["loss_curves"] = dg.MetadataValue.json({"source": cmp.source_losses, "target": cmp.target_losses})
    return meta


def recorded_metadata(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str
) -> dict[str, Any] | None:
    """Plain values of the latest materialization of ``key[partition]``, or None."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    mat = records[0].asset_materialization if records else None
    if mat is None:
        return None
    return {k: v.value for k, v in mat.metadata.items()}


# --- checks ----------------------------------------------------------------------------------------


def replica_check(check: Any, region: str) -> dg.AssetCheckResult:
    """``replica_matches_fingerprint`` of a :class:`~spotshift.sync.datasets.ReplicaCheck`."""
    return dg.AssetCheckResult(
        passed=check.passed,
        description=check.problem
        or f"replica in {region} is snapshot {check.expected_root}, all chunks present",
        metadata={
            "expected_root": check.expected_root,
            "replica_root": check.replica_root or "",
            "chunks_checked": dg.MetadataValue.int(check.chunks_checked),
            "chunks_missing_or_wrong_size": dg.MetadataValue.int(len(check.missing)),
            "missing_or_wrong_size": dg.MetadataValue.json(check.missing[:20]),
            "detail": dg.MetadataValue.json(check.to_dict()),
        },
    )


def shadow_check(verdict: ShadowVerdict, job: str) -> dg.AssetCheckResult:
    """A shadow verdict as its asset check's result (ERROR when it blocks, else WARN)."""
    return dg.AssetCheckResult(
        passed=verdict.passed,
        severity=dg.AssetCheckSeverity.ERROR if verdict.blocking else dg.AssetCheckSeverity.WARN,
        description=verdict.description,
        metadata={
            "job": job,
            **{k: dg.MetadataValue.float(v) for k, v in verdict.measured.items()},
        },
    )


def shadow_checks(verdicts: list[ShadowVerdict], job: str) -> dict[str, dg.AssetCheckResult]:
    """Every shadow verdict as its check's result, by check name."""
    return {v.name: shadow_check(v, job) for v in verdicts}


def check_evaluation(
    asset_key: dg.AssetKey, name: str, result: dg.AssetCheckResult, partition: Any
) -> dg.AssetCheckEvaluation:
    """A check result as the event an op records for ``partition`` of ``asset_key`` (blocking)."""
    return dg.AssetCheckEvaluation(
        asset_key=asset_key,
        check_name=name,
        passed=result.passed,
        metadata=dict(result.metadata or {}),
        severity=result.severity,
        description=result.description,
        blocking=True,
        partition=str(partition),
    )


# --- config ----------------------------------------------------------------------------------------


def _field(tp: Any, default: Any) -> dg.Field:
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType)
    base = next((a for a in typing.get_args(tp) if a is not type(None)), tp) if optional else tp
    dagster_type = dg.Noneable(base) if optional else base
    if default is dataclasses.MISSING:
        return dg.Field(dagster_type, is_required=True)
    return dg.Field(dagster_type, is_required=False, default_value=default)


def config_schema(*classes: type) -> dict[str, dg.Field]:
    """An op's config schema: the fields of the library dataclasses it builds from its config (so
    the config never repeats a dataclass field by field)."""
    schema: dict[str, dg.Field] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            schema[f.name] = _field(hints[f.name], f.default)
    return schema


def config_of(cls: type, config: dict[str, Any]) -> Any:
    """``cls`` built from the part of an op's config that names its fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in config.items() if k in names})
