"""The GPU catalog: what an instance type *is* — GPU model and count, interconnect, network, storage.

``catalog.csv`` (shipped with the package) has one row per instance type:

=================  ===================================================================================
provider           aws | gcp | azure
instance_type      provider spelling (``p4d.24xlarge``, ``a2-highgpu-8g``, ``Standard_ND96asr_v4``)
family             provider family / series (``p4d``, ``a2``, ``ND_A100_v4``)
gpu_model          canonical model (:data:`GPU_MODELS`), e.g. ``A100-40GB``
provider_gpu       the provider's own name for the GPU; for GCP the accelerator key of the price
                   history and of the Cloud Billing GPU SKUs (``a100``, ``a100-80gb``, ``h100-80gb-mega``)
gpu_count          GPUs per instance
gpu_memory_gib     memory of ONE GPU, GiB
nvlink             GPUs of the instance talk over NVLink/NVSwitch (false for single-GPU and PCIe-only)
vcpus, ram_gib     host vCPUs and memory (GCP prices an instance as GPU + vCPU + RAM SKUs)
net_gbps           documented maximum network bandwidth of the instance, Gbit/s, including the
                   GPU-to-GPU fabric (EFA, GPUDirect-TCPX(O), InfiniBand/RoCE NICs); "up to" figures
                   are taken at face value. AWS and GCP document one total; Azure documents the VM's
                   Ethernet "Max Bandwidth" and the InfiniBand fabric separately, so Azure rows hold
                   their sum (ND H100 v5: 80 + 8 x 400 = 3280)
storage_gbps       documented maximum throughput to network block storage, Gbit/s: AWS maximum
                   EBS-optimized bandwidth (Mbps / 1000); Azure max uncached disk throughput
                   (MBps = 10^6 B/s, x 8 / 1000); GCP per-instance Persistent Disk SSD limit (A2, G2)
                   or Hyperdisk limit (A3). GCP publishes those limits in MiB/s (x 8.388608 / 1000);
                   the GCP figures here (1.92 / 6.4 / 9.6 / 19.2) have not yet been checked against
                   the per-machine-type tables
source             provider documentation page that states the row's figures
=================  ===================================================================================

The topology score (0-10) is derived from documented facts only, see :func:`topology_score`.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from spotshift.errors import InputError
from spotshift.pricing.quote import effective_gpu_hour_usd

#: canonical GPU model names used everywhere (quotes, jobs, placement)
GPU_MODELS: tuple[str, ...] = (
    "T4-16GB",
    "L4-24GB",
    "A10G-24GB",
    "L40S-48GB",
    "A100-40GB",
    "A100-80GB",
    "H100-80GB",
    "H200-141GB",
)

#: other spellings seen in feeds and histories -> canonical model. Keys are lower-case.
#: GCP history / billing keys (``a100``, ``h100-80gb-mega``...), GCP accelerator types
#: (``nvidia-tesla-a100``), and the bare names users type.
GPU_SPELLINGS: dict[str, str] = {
    **{m.lower(): m for m in GPU_MODELS},
    "t4": "T4-16GB",
    "nvidia-tesla-t4": "T4-16GB",
    "l4": "L4-24GB",
    "nvidia-l4": "L4-24GB",
    "a10g": "A10G-24GB",
    "l40s": "L40S-48GB",
    "a100": "A100-40GB",
    "a100-40gb": "A100-40GB",
    "nvidia-tesla-a100": "A100-40GB",
    "a100-80gb": "A100-80GB",
    "nvidia-a100-80gb": "A100-80GB",
    "h100": "H100-80GB",
    "h100-80gb": "H100-80GB",
    "nvidia-h100-80gb": "H100-80GB",
    "h100-80gb-mega": "H100-80GB",
    "nvidia-h100-mega-80gb": "H100-80GB",
    "h200": "H200-141GB",
    "h200-141gb": "H200-141GB",
    "nvidia-h200-141gb": "H200-141GB",
}

CATALOG_COLUMNS = (
    "provider",
    "instance_type",
    "family",
    "gpu_model",
    "provider_gpu",
    "gpu_count",
    "gpu_memory_gib",
    "nvlink",
    "vcpus",
    "ram_gib",
    "net_gbps",
    "storage_gbps",
    "source",
)
PROVIDERS = ("aws", "gcp", "azure")


def canonical_gpu_model(spelling: str) -> str | None:
    """The canonical model for any known spelling (``a100`` -> ``A100-40GB``), else ``None``."""
    return GPU_SPELLINGS.get(spelling.strip().lower())


def topology_score(gpu_count: int, nvlink: bool, net_gbps: float) -> float:
    """0-10 suitability for distributed training, from documented facts only.

    Single GPU: 3 (nothing to shard across). PCIe-only multi-GPU: 4, or 5 with >= 4 GPUs.
    NVLink/NVSwitch: 7 for 2 GPUs, 8 for up to 4, 9 for 8 or more; +1 for an 8+-GPU NVLink node
    with >= 400 Gbit/s of network (a multi-node fabric such as EFA, InfiniBand or GPUDirect).
    DESIGN §3: training needs >= 7, i.e. NVLink multi-GPU.
    """
    if gpu_count <= 1:
        score = 3
    elif not nvlink:
        score = 4 if gpu_count < 4 else 5
    elif gpu_count == 2:
        score = 7
    elif gpu_count <= 4:
        score = 8
    else:
        score = 9
        if net_gbps >= 400:
            score += 1
    return float(min(10, max(0, score)))


@dataclass(frozen=True)
class CatalogEntry:
    """One instance type of :data:`catalog.csv`."""

    provider: str
    instance_type: str
    family: str
    gpu_model: str
    provider_gpu: str
    gpu_count: int
    gpu_memory_gib: float
    nvlink: bool
    vcpus: int
    ram_gib: float
    net_gbps: float
    storage_gbps: float
    source: str

    @property
    def topology_score(self) -> float:
        """See :func:`topology_score`."""
        return topology_score(self.gpu_count, self.nvlink, self.net_gbps)

    @property
    def effective_factor(self) -> float:
        """``effective_gpu_hour_usd / price_usd_hour`` for this instance (the formula is linear in price)."""
        return effective_gpu_hour_usd(1.0, self.gpu_count, self.net_gbps, self.storage_gbps)


class Catalog:
    """Instance types by ``(provider, instance_type)``."""

    def __init__(self, entries: list[CatalogEntry], origin: str = "catalog") -> None:
        self.origin = origin
        self._by_key: dict[tuple[str, str], CatalogEntry] = {}
        for e in entries:
            key = (e.provider, e.instance_type)
            if key in self._by_key:
                raise InputError(f"{origin}: duplicate instance type {e.provider}/{e.instance_type}")
            self._by_key[key] = e

    def __iter__(self) -> Iterator[CatalogEntry]:
        return iter(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, provider: str, instance_type: str) -> CatalogEntry | None:
        """The entry, or ``None`` for an instance type the catalog does not know."""
        return self._by_key.get((provider, instance_type))

    def instance_types(self, provider: str) -> list[str]:
        """Every known instance type of ``provider``, sorted."""
        return sorted(t for p, t in self._by_key if p == provider)

    def to_frame(self) -> Any:
        """Polars frame of every entry plus ``topology_score`` and ``effective_factor`` columns."""
        import polars as pl

        rows = [
            {**e.__dict__, "topology_score": e.topology_score, "effective_factor": e.effective_factor}
            for e in self
        ]
        return pl.DataFrame(
            rows,
            schema={
                "provider": pl.String,
                "instance_type": pl.String,
                "family": pl.String,
                "gpu_model": pl.String,
                "provider_gpu": pl.String,
                "gpu_count": pl.Int32,
                "gpu_memory_gib": pl.Float64,
                "nvlink": pl.Boolean,
                "vcpus": pl.Int32,
                "ram_gib": pl.Float64,
                "net_gbps": pl.Float64,
                "storage_gbps": pl.Float64,
                "source": pl.String,
                "topology_score": pl.Float64,
                "effective_factor": pl.Float64,
            },
        )


def _parse_row(row: dict[str, str], where: str) -> CatalogEntry:
    missing = [c for c in CATALOG_COLUMNS if not (row.get(c) or "").strip()]
    if missing:
        raise InputError(f"{where}: empty or missing {', '.join(missing)}")
    try:
        entry = CatalogEntry(
            provider=row["provider"].strip(),
            instance_type=row["instance_type"].strip(),
            family=row["family"].strip(),
            gpu_model=row["gpu_model"].strip(),
            provider_gpu=row["provider_gpu"].strip(),
            gpu_count=int(row["gpu_count"]),
            gpu_memory_gib=float(row["gpu_memory_gib"]),
            nvlink={"true": True, "false": False}[row["nvlink"].strip().lower()],
            vcpus=int(row["vcpus"]),
            ram_gib=float(row["ram_gib"]),
            net_gbps=float(row["net_gbps"]),
            storage_gbps=float(row["storage_gbps"]),
            source=row["source"].strip(),
        )
    except (ValueError, KeyError) as exc:
        raise InputError(f"{where}: bad value ({exc})") from None
    if entry.provider not in PROVIDERS:
        raise InputError(f"{where}: provider {entry.provider!r} is not one of {', '.join(PROVIDERS)}")
    if entry.gpu_model not in GPU_MODELS:
        raise InputError(f"{where}: gpu_model {entry.gpu_model!r} is not a canonical model")
    if min(entry.gpu_count, entry.vcpus) <= 0 or min(entry.net_gbps, entry.storage_gbps, entry.ram_gib) <= 0:
        raise InputError(f"{where}: counts and bandwidths must be positive")
    return entry


def read_catalog(path: str | Path) -> Catalog:
    """Load and validate a catalog CSV with :data:`CATALOG_COLUMNS`."""
    p = Path(path)
    with p.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CATALOG_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"catalog {p}: missing column(s) {', '.join(missing)}")
        entries = [_parse_row(row, f"catalog {p} line {i + 2}") for i, row in enumerate(reader)]
    return Catalog(entries, origin=f"catalog {p}")


@functools.cache
def load_catalog() -> Catalog:
    """The catalog shipped with spotshift (``spotshift/pricing/catalog.csv``), parsed once per process."""
    with resources.as_file(resources.files("spotshift.pricing") / "catalog.csv") as p:
        return read_catalog(p)


def gpu_model_matches(wanted: str | None, offered: str) -> bool:
    """Case-insensitive; ``A100`` matches ``a100`` and ``A100-40GB``; ``A100-80GB`` does not match ``a100``."""
    if not wanted:
        return True
    w, o = wanted.strip().lower(), offered.strip().lower()
    return o == w or o.startswith(w + "-")
