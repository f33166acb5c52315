"""GPU topology verification: what ``nvidia-smi topo -m`` says about a machine, as a 0-10 score.

Seed 000 ("GPU Topology Fragmentation"): providers sell "8x A100" without guaranteeing the NVLink
layout — some nodes are fully connected meshes, some are pairs of 4-GPU islands with slower links
between them — so a move verifies the target before it trusts the catalog. This module:

* :func:`parse_topo_matrix` — the GPU-to-GPU link matrix of ``nvidia-smi topo -m`` (tab or space
  separated; NIC rows/columns, affinity columns and the legend ignored). Links: ``NV#`` (a bonded set
  of # NVLinks), ``PIX``, ``PXB``, ``PHB``, ``NODE``, ``SYS`` (``SOC`` is the old spelling of SYS).
* :func:`score_topology` — the score on the catalog's scale (:func:`spotshift.pricing.catalog.topology_score`):
  single GPU 3; PCIe only 5 with >= 4 GPUs (4 with fewer), one less when a pair crosses the CPU
  sockets (SYS); one NVLink domain joining every pair directly 7 (2 GPUs) / 8 (<= 4) / 9 (8+), one less
  when some pairs are joined only through other GPUs (a hybrid cube mesh); NVLink islands joined by
  PCIe 6, or 5 when the inter-island path crosses the sockets (SYS). Training needs >= 7 (DESIGN
  §3), so a fragmented 8-GPU node is refused however the catalog lists it.
* measured scores per ``(location, instance_type)``, kept under ``$SPOTSHIFT_HOME/topology/``
  (:func:`record_measurement`, :func:`measured_scores`) — they override the catalog's documented
  score wherever placement reads quotes (:func:`apply_measured`).
* :func:`probe_target` — the check a move's probation runs on the target first: the output of the
  probe command (``$SPOTSHIFT_TOPOLOGY_PROBE``, a command template with ``{location}`` and
  ``{instance_type}``; default ``nvidia-smi topo -m`` when ``nvidia-smi`` is on PATH), parsed, scored
  and recorded.

Standard library only (the command line imports it).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from spotshift.atomic import atomic_write_json
from spotshift.clock import virtual_now
from spotshift.errors import InputError
from spotshift.home import spotshift_home
from spotshift.jsondoc import parse_json
from spotshift.pricing.regions import check_location

PCIE_LINKS = ("PIX", "PXB", "PHB", "NODE", "SYS")
"""PCIe link kinds, best first (nvidia-smi's legend order, reversed)."""
_NV = re.compile(r"^NV(\d+)$")
PROBE_ENV = "SPOTSHIFT_TOPOLOGY_PROBE"
PROBE_TIMEOUT_S = 60.0
#: seed 000: "For 8x A100 NVLink, expect >150 Gbps effective all-reduce"
EXPECTED_ALLREDUCE_GBPS_8X_A100 = 150.0


@dataclass(frozen=True)
class TopologyMatrix:
    """The GPU-to-GPU links of one machine: ``links[i][j]`` for GPUs i != j (``"X"`` on the diagonal)."""

    gpus: int
    links: tuple[tuple[str, ...], ...]

    def link(self, i: int, j: int) -> str:
        return self.links[i][j]

    def pairs(self) -> Iterable[tuple[int, int, str]]:
        for i in range(self.gpus):
            for j in range(i + 1, self.gpus):
                yield i, j, self.links[i][j]


def _normalise_link(cell: str, where: str) -> str:
    c = cell.strip().upper()
    if c == "SOC":  # drivers before R384 printed SOC for the socket interconnect
        return "SYS"
    if c == "X" or c in PCIE_LINKS or _NV.match(c):
        return c
    raise InputError(f"{where}: unknown link {cell!r} (expected X, NV#, PIX, PXB, PHB, NODE or SYS)")


def parse_topo_matrix(text: str, *, what: str = "nvidia-smi topo -m output") -> TopologyMatrix:
    """The GPU-to-GPU matrix of ``nvidia-smi topo -m`` output; :class:`InputError` naming ``what`` and
    the problem when it has no GPU rows, a row is short, an unknown link, or the matrix is not
    symmetric."""
    lines = [ln.rstrip() for ln in text.splitlines()]
    header_idx = next((i for i, ln in enumerate(lines) if re.match(r"^\s+GPU0\b", ln)), None)
    if header_idx is None:
        raise InputError(f"{what}: no header line starting with GPU0 (is this `nvidia-smi topo -m`?)")
    header = lines[header_idx].split()
    gpus = 0
    while gpus < len(header) and header[gpus] == f"GPU{gpus}":
        gpus += 1
    rows: dict[int, list[str]] = {}
    for ln in lines[header_idx + 1 :]:
        m = re.match(r"^GPU(\d+)\s+(.*)$", ln)
        if not m:
            if ln.strip().startswith("Legend"):
                break
            continue
        idx, cells = int(m.group(1)), m.group(2).split()
        if idx >= gpus:
            raise InputError(f"{what}: row GPU{idx} has no column in the header")
        if len(cells) < gpus:
            raise InputError(f"{what}: row GPU{idx} has {len(cells)} cells, expected at least {gpus}")
        rows[idx] = [_normalise_link(c, f"{what} row GPU{idx}") for c in cells[:gpus]]
    missing = [i for i in range(gpus) if i not in rows]
    if missing:
        raise InputError(f"{what}: no row for GPU{missing[0]}")
    for i in range(gpus):
        if rows[i][i] != "X":
            raise InputError(f"{what}: GPU{i} row does not have X on the diagonal")
        for j in range(i + 1, gpus):
            if rows[i][j] != rows[j][i] or rows[i][j] == "X":
                raise InputError(
                    f"{what}: GPU{i}-GPU{j} is {rows[i][j]} but GPU{j}-GPU{i} is {rows[j][i]} (not symmetric)"
                )
    return TopologyMatrix(gpus, tuple(tuple(rows[i]) for i in range(gpus)))


@dataclass(frozen=True)
class TopologyScore:
    """A machine's topology in numbers: the score and what it rests on."""

    score: float
    gpus: int
    nvlink_islands: list[list[int]]
    """Connected components of the NVLink graph (a fully connected node is one island)."""
    fully_connected: bool
    """Every pair of GPUs has a direct NVLink."""
    min_nvlinks: int
    """Fewest bonded NVLinks on a direct NVLink pair (0: none)."""
    worst_link: str
    """The slowest link any pair has to use (NV# when every pair is NVLink, else a PCIe kind)."""
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _islands(m: TopologyMatrix, joins: Any = lambda link: link.startswith("NV")) -> list[list[int]]:
    """Connected components of the graph of the links ``joins`` accepts (default: NVLink)."""
    parent = list(range(m.gpus))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j, link in m.pairs():
        if joins(link):
            parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for g in range(m.gpus):
        groups.setdefault(find(g), []).append(g)
    return sorted(groups.values())


def score_topology(m: TopologyMatrix) -> TopologyScore:
    """The 0-10 score of ``m`` (the rules are in the module docstring)."""
    n = m.gpus
    islands = _islands(m)
    links = [link for _, _, link in m.pairs()]
    nv = [int(_NV.match(lk).group(1)) for lk in links if _NV.match(lk)]  # type: ignore[union-attr]
    pcie = [lk for lk in links if lk in PCIE_LINKS]
    worst = max(pcie, key=PCIE_LINKS.index) if pcie else (f"NV{min(nv)}" if nv else "X")
    full = n > 1 and not pcie
    if n <= 1:
        score, reason = 3.0, "single GPU"
    elif not nv:
        score = 5.0 if n >= 4 else 4.0
        reason = f"PCIe only ({worst} at worst)"
        if worst == "SYS":
            score -= 1
            sockets = _islands(m, lambda link: link != "SYS")
            sizes = "+".join(str(len(i)) for i in sockets)
            reason = f"PCIe only: islands of {sizes} GPUs joined by SYS (across the CPU sockets)"
    elif len(islands) == 1:
        score = 7.0 if n == 2 else 8.0 if n <= 4 else 9.0
        reason = f"one NVLink domain of {n} GPUs"
        if not full:
            score -= 1
            reason += f", some pairs only through other GPUs ({worst} direct)"
    else:
        sizes = "+".join(str(len(i)) for i in islands)
        score = 5.0 if worst == "SYS" else 6.0
        reason = f"fragmented: NVLink islands of {sizes} GPUs joined by {worst}"
    return TopologyScore(score, n, islands, full, min(nv) if nv else 0, worst, reason)


# --- the check on a target ------------------------------------------------------------------------


def probe_command(location: str, instance_type: str) -> list[str] | None:
    """The command whose output is the target's ``nvidia-smi topo -m``: ``$SPOTSHIFT_TOPOLOGY_PROBE``
    with ``{location}`` and ``{instance_type}`` filled in (how a real launcher reaches the target,
    e.g. ``ssh {instance_type}.example nvidia-smi topo -m``), else ``nvidia-smi topo -m`` when it is
    on PATH (the local backend runs on this machine), else None: nothing to probe."""
    template = os.environ.get(PROBE_ENV, "").strip()
    if template:
        try:
            return [a.format(location=location, instance_type=instance_type) for a in shlex.split(template)]
        except (ValueError, KeyError, IndexError) as exc:
            raise InputError(f"${PROBE_ENV}: not a command template ({exc})") from None
    if shutil.which("nvidia-smi"):
        return ["nvidia-smi", "topo", "-m"]
    return None


def run_probe(argv: Sequence[str]) -> str:
    """Run a probe command; :class:`InputError` naming it and its exit status (never its output)."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise InputError(f"topology probe {argv[0]!r}: command not found") from None
    except subprocess.TimeoutExpired:
        raise InputError(f"topology probe {argv[0]!r}: no answer in {PROBE_TIMEOUT_S:g} s") from None
    if done.returncode != 0:
        raise InputError(f"topology probe {argv[0]!r}: exit status {done.returncode}")
    return done.stdout


@dataclass(frozen=True)
class TopologyCheck:
    """The check of one target: its measured score against the job's minimum."""

    location: str
    instance_type: str
    min_score: float
    measured: TopologyScore | None
    """None: nothing to probe (no probe command, no nvidia-smi): the catalog's score stands."""
    probe: str = ""
    catalog_score: float | None = None

    @property
    def passed(self) -> bool:
        return self.measured is None or self.measured.score >= self.min_score

    @property
    def description(self) -> str:
        if self.measured is None:
            return (
                f"{self.location} {self.instance_type}: not probed (no probe command); catalog score stands"
            )
        verdict = ">=" if self.passed else "<"
        return (
            f"{self.location} {self.instance_type}: measured topology score {self.measured.score:g} "
            f"{verdict} min_topology_score {self.min_score:g} ({self.measured.reason})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "location": self.location,
            "instance_type": self.instance_type,
            "min_score": self.min_score,
            "passed": self.passed,
            "description": self.description,
            "probe": self.probe,
            "catalog_score": self.catalog_score,
            "measured": self.measured.to_dict() if self.measured else None,
        }


def probe_target(
    location: str, instance_type: str, min_score: float, *, provider_catalog_score: float | None = None
) -> TopologyCheck:
    """Probe ``location``'s ``instance_type``, score it, record the measurement (it overrides the
    catalog from now on) and compare it with ``min_score``."""
    argv = probe_command(location, instance_type)
    if argv is None:
        return TopologyCheck(location, instance_type, min_score, None, "", provider_catalog_score)
    text = run_probe(argv)
    measured = score_topology(parse_topo_matrix(text, what=f"topology probe of {location} {instance_type}"))
    record_measurement(location, instance_type, measured, source=" ".join(argv[:1]))
    return TopologyCheck(location, instance_type, min_score, measured, argv[0], provider_catalog_score)


# --- measured scores ------------------------------------------------------------------------------


@dataclass
class Measurement:
    """A measured score of one instance type in one location (the latest wins)."""

    location: str
    instance_type: str
    score: float
    reason: str
    measured_at: str
    source: str = ""
    allreduce_bus_gbps: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _measured_path() -> Any:
    return spotshift_home() / "topology" / "measured.json"


def _key(location: str, instance_type: str) -> str:
    return f"{location}|{instance_type}"


def load_measurements() -> dict[str, Measurement]:
    """Every kept measurement by ``location|instance_type``."""
    path = _measured_path()
    if not path.exists():
        return {}
    raw = parse_json(path.read_bytes(), f"topology measurements {path}")
    if not isinstance(raw, dict):
        raise InputError(f"topology measurements {path}: not a JSON object")
    try:
        return {k: Measurement(**v) for k, v in raw.items()}
    except TypeError as exc:
        raise InputError(f"topology measurements {path}: bad entry ({exc})") from None


def record_measurement(
    location: str,
    instance_type: str,
    measured: TopologyScore,
    *,
    source: str = "",
    allreduce_bus_gbps: float | None = None,
) -> Measurement:
    """Keep ``measured`` for ``(location, instance_type)`` (atomic rewrite; replaces an older one)."""
    check_location(location, "topology location")
    entries = load_measurements()
    m = Measurement(
        location=location,
        instance_type=instance_type,
        score=measured.score,
        reason=measured.reason,
        measured_at=virtual_now().isoformat(),
        source=source,
        allreduce_bus_gbps=allreduce_bus_gbps,
        details=measured.to_dict(),
    )
    entries[_key(location, instance_type)] = m
    path = _measured_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {k: asdict(v) for k, v in sorted(entries.items())})
    return m


def measured_scores() -> dict[tuple[str, str], float]:
    """``{(location, instance_type): score}`` of every kept measurement."""
    return {(m.location, m.instance_type): m.score for m in load_measurements().values()}


def apply_measured(quotes: Sequence[Any], scores: dict[tuple[str, str], float] | None = None) -> list[Any]:
    """``quotes`` (NormalizedGPUQuote) with the topology score replaced by the measured one where a
    measurement of that instance type in that location is kept: measured beats documented."""
    from dataclasses import replace

    scores = measured_scores() if scores is None else scores
    if not scores:
        return list(quotes)
    out = []
    for q in quotes:
        s = scores.get((q.location, q.instance_type))
        out.append(q if s is None or s == q.topology_score else replace(q, topology_score=s))
    return out
