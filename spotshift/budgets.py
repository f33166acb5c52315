"""Team budgets: a monthly spending cap per team, a soft alert level, and the gate that keeps
placement and the autoscaler from starting spend that would cross the cap.

Declarations live in section ``budgets`` of the declarations file (``spotshift budgets set``);
training jobs (``jobs add --team``) and endpoints (``endpoints add --team``) name their team.

Month-to-date spend of a team (:func:`team_spend`), calendar month of the virtual clock, UTC:

* compute intervals of its jobs (``raw.compute_usage.usd``, prorated to the part inside the month),
* checkpoint transfers of its jobs (``raw.transfers.egress_usd``, ``kind = 'checkpoint'``),
* inference windows of its endpoints (``raw.inference_usage.usd``).

Committed spend adds, for every other job of the team whose placement state says it is running,
its price for the hours left in the month (spend already started, not yet recorded).

The gate (:func:`gate_decision` for training, :func:`spotshift.serving.autoscale.gate_scaling` for the autoscaler) refuses a
new placement whose price for the rest of the month (capped at the job's remaining hours) would
take committed spend past ``monthly_usd``: it goes to the cheapest eligible candidate that fits
instead, stays where it runs (a running job's spend has already started), or queues, and the
decision's reasons say which and why. An endpoint's launches are withheld (``hold``) when its
planned fleet for the rest of the month would cross the cap.

Crossing ``alert x monthly_usd`` records one ``raw.budget_alerts`` fact per team, month and level
(``alert`` or ``limit``); ``spotshift budgets show`` and ``spotshift report`` show the burn.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

from spotshift import registry
from spotshift.errors import ConfigError, SpotshiftError, build_record, check_range
from spotshift.jobs import load_jobs
from spotshift.placement.state import PlacementState, load_state
from spotshift.serving.endpoints import load_endpoints
from spotshift.teams import check_team as check_team
from spotshift.warehouse import record_facts

SECTION = "budgets"
DEFAULT_ALERT = 0.8


@dataclass(frozen=True)
class Budget:
    """A team's monthly cap (USD, hard limit) and its soft alert level (share of the cap, 0-1]."""

    name: str
    monthly_usd: float
    alert: float = DEFAULT_ALERT

    def __post_init__(self) -> None:
        check_team(self.name)
        try:
            check_range(self.monthly_usd, "monthly_usd", low=0, high=1e12)
            check_range(self.alert, "alert", low=0, high=1)
        except SpotshiftError as exc:
            raise ConfigError(f"budget {self.name!r}: {exc}") from None

    @property
    def alert_usd(self) -> float:
        """Spend at which the soft alert fires."""
        return self.monthly_usd * self.alert

    def to_dict(self) -> dict[str, Any]:
        """The declaration as written to the YAML file."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Budget:
        """Build from a YAML entry; unknown or mistyped keys raise :class:`ConfigError`."""
        return build_record(cls, raw, f"budget {raw.get('name', '?')!r}")


def set_budget(budget: Budget) -> None:
    """Declare or replace the budget of ``budget.name`` (atomically)."""
    registry.upsert(SECTION, budget.to_dict(), replace=True)


def load_budgets() -> list[Budget]:
    """Every declared budget, validated."""
    return [Budget.from_dict(e) for e in registry.entries(SECTION)]


def find_budget(team: str | None) -> Budget | None:
    """The budget of ``team``; None when the team has none (or ``team`` is None)."""
    if team is None:
        return None
    return next((b for b in load_budgets() if b.name == team), None)


def get_budget(team: str) -> Budget:
    """The budget of ``team``; :class:`ConfigError` when it has none."""
    return Budget.from_dict(registry.get(SECTION, team))


def month_bounds(now: datetime) -> tuple[datetime, datetime]:
    """Start and end (exclusive) of the UTC calendar month of ``now`` (naive UTC datetimes)."""
    n = now.astimezone(UTC).replace(tzinfo=None) if now.tzinfo else now
    start = n.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    days = calendar.monthrange(n.year, n.month)[1]
    return start, start + timedelta(days=days)


def hours_left_in_month(now: datetime) -> float:
    """Hours from ``now`` to the end of its calendar month."""
    n = now.astimezone(UTC).replace(tzinfo=None) if now.tzinfo else now
    return max(0.0, (month_bounds(n)[1] - n).total_seconds() / 3600.0)


def team_members(team: str) -> tuple[list[str], list[str]]:
    """Names of the declared jobs and endpoints of ``team``."""
    jobs = [j.name for j in load_jobs() if j.team == team]
    endpoints = [e.name for e in load_endpoints() if e.team == team]
    return jobs, endpoints


def table_exists(con: Any, schema: str, table: str) -> bool:
    """Whether ``schema.table`` exists in the database of ``con``."""
    return bool(
        con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            [schema, table],
        ).fetchall()[0][0]
    )


def team_spend(con: Any, jobs: Iterable[str], endpoints: Iterable[str], now: datetime) -> float:
    """Month-to-date USD of these jobs and endpoints in the warehouse ``con`` (rules in the module doc)."""
    start, end = month_bounds(now)
    jobs, endpoints = list(jobs), list(endpoints)
    total = 0.0
    if jobs and table_exists(con, "raw", "compute_usage"):
        total += con.execute(
            """
            SELECT coalesce(sum(
                usd * CASE WHEN ended_at > started_at
                    THEN greatest(0, epoch(least(ended_at, ?::TIMESTAMP) - greatest(started_at, ?::TIMESTAMP)))
                         / epoch(ended_at - started_at)
                    ELSE CASE WHEN started_at >= ?::TIMESTAMP AND started_at < ?::TIMESTAMP THEN 1 ELSE 0 END
                END), 0)
            FROM (SELECT DISTINCT ON (usage_id) * FROM raw.compute_usage)
            WHERE job IN (SELECT unnest(?::VARCHAR[])) AND usd IS NOT NULL
            """,
            [end, start, start, end, jobs],
        ).fetchall()[0][0]
    if jobs and table_exists(con, "raw", "transfers"):
        total += con.execute(
            """
            SELECT coalesce(sum(egress_usd), 0)
            FROM (SELECT DISTINCT ON (transfer_id) * FROM raw.transfers)
            WHERE kind = 'checkpoint' AND entity IN (SELECT unnest(?::VARCHAR[]))
              AND started_at >= ?::TIMESTAMP AND started_at < ?::TIMESTAMP
            """,
            [jobs, start, end],
        ).fetchall()[0][0]
    if endpoints and table_exists(con, "raw", "inference_usage"):
        total += con.execute(
            """
            SELECT coalesce(sum(usd), 0) FROM raw.inference_usage
            WHERE endpoint IN (SELECT unnest(?::VARCHAR[]))
              AND window_start >= ?::TIMESTAMP AND window_start < ?::TIMESTAMP
            """,
            [endpoints, start, end],
        ).fetchall()[0][0]
    return float(total)


def commitments(
    jobs: Iterable[str], now: datetime, states: Mapping[str, PlacementState] | None = None
) -> dict[str, float]:
    """USD each running job among ``jobs`` will spend until the month ends (placement state, from
    ``states`` when given); jobs not running are left out."""
    hours = hours_left_in_month(now)
    out = {}
    for name in jobs:
        st = states[name] if states is not None and name in states else load_state(name)
        if st.status in ("starting", "running", "migrating") and st.price_usd_hour:
            out[name] = float(st.price_usd_hour) * hours
    return out


def running_commitments(jobs: Iterable[str], now: datetime, *, exclude: str | None = None) -> float:
    """USD the running jobs among ``jobs`` (placement state) will spend until the month ends: the
    correctly rounded sum (:func:`math.fsum`), so it does not depend on the order of ``jobs``."""
    return math.fsum(v for k, v in commitments(jobs, now).items() if k != exclude)


@dataclass(frozen=True)
class BudgetStatus:
    """Where a team stands this month: spend so far, commitments of running jobs, the cap."""

    budget: Budget
    month_start: datetime
    spent_usd: float
    committed_usd: float
    hours_left: float

    @property
    def used_usd(self) -> float:
        """Spent plus committed."""
        return self.spent_usd + self.committed_usd

    @property
    def burn(self) -> float:
        """Share of the cap spent so far (may exceed 1)."""
        return self.spent_usd / self.budget.monthly_usd

    @property
    def level(self) -> str:
        """``ok``, ``alert`` (spend reached the soft level) or ``limit`` (spend reached the cap)."""
        if self.spent_usd >= self.budget.monthly_usd:
            return "limit"
        if self.spent_usd >= self.budget.alert_usd:
            return "alert"
        return "ok"

    def fits(self, extra_usd: float) -> bool:
        """Whether starting ``extra_usd`` of new spend keeps committed spend within the cap."""
        return self.used_usd + extra_usd <= self.budget.monthly_usd + 1e-9

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "team": self.budget.name,
            "month": self.month_start.strftime("%Y-%m"),
            "monthly_usd": self.budget.monthly_usd,
            "alert": self.budget.alert,
            "spent_usd": round(self.spent_usd, 6),
            "committed_usd": round(self.committed_usd, 6),
            "burn": round(self.burn, 6),
            "level": self.level,
        }


def budget_status(con: Any, budget: Budget, now: datetime, *, exclude_job: str | None = None) -> BudgetStatus:
    """The team's month-to-date spend (``con``: the warehouse) and running commitments at ``now``."""
    jobs, endpoints = team_members(budget.name)
    return BudgetStatus(
        budget=budget,
        month_start=month_bounds(now)[0],
        spent_usd=team_spend(con, jobs, endpoints, now),
        committed_usd=running_commitments(jobs, now, exclude=exclude_job),
        hours_left=hours_left_in_month(now),
    )


@dataclass(frozen=True)
class TeamTally:
    """A team's month for deciding many of its jobs in one tick: :meth:`status_for` equals
    :func:`budget_status` with ``exclude_job`` for each job, from one spend query and one pass
    over the members' states."""

    budget: Budget
    month_start: datetime
    spent_usd: float
    hours_left: float
    committed: dict[str, float]
    total: Fraction  # exact sum of ``committed``

    def status_for(self, job: str) -> BudgetStatus:
        """The team's status as the decision for ``job`` sees it (its own commitment excluded)."""
        committed = float(self.total - Fraction(self.committed.get(job, 0.0)))  # == fsum of the others
        return BudgetStatus(self.budget, self.month_start, self.spent_usd, committed, self.hours_left)


def team_tally(
    con: Any, budget: Budget, now: datetime, states: Mapping[str, PlacementState] | None = None
) -> TeamTally:
    """The :class:`TeamTally` of ``budget``'s team at ``now`` (``states``: placement states already read)."""
    jobs, endpoints = team_members(budget.name)
    committed = commitments(jobs, now, states)
    return TeamTally(
        budget=budget,
        month_start=month_bounds(now)[0],
        spent_usd=team_spend(con, jobs, endpoints, now),
        hours_left=hours_left_in_month(now),
        committed=committed,
        total=sum((Fraction(v) for v in committed.values()), Fraction(0)),
    )


def alert_rows(status: BudgetStatus, now: datetime) -> list[dict[str, Any]]:
    """The ``raw.budget_alerts`` rows the status calls for (none below the soft level)."""
    levels = {"ok": (), "alert": ("alert",), "limit": ("alert", "limit")}[status.level]
    b = status.budget
    return [
        {
            "team": b.name,
            "month": status.month_start.strftime("%Y-%m"),
            "level": level,
            "raised_at": now.replace(tzinfo=None) if now.tzinfo else now,
            "spent_usd": status.spent_usd,
            "threshold_usd": b.alert_usd if level == "alert" else b.monthly_usd,
            "monthly_usd": b.monthly_usd,
        }
        for level in levels
    ]


def record_alerts(con: Any, status: BudgetStatus, now: datetime) -> int:
    """Record the alert facts of ``status`` (idempotent per team, month and level); rows written."""
    rows = alert_rows(status, now)
    if not rows:
        return 0
    return record_facts({"raw.budget_alerts": rows}, con=con).rows("raw.budget_alerts")


def _month_cost(price_usd_hour: float, remaining_hours: float, hours_left: float) -> float:
    return float(price_usd_hour) * max(0.0, min(remaining_hours, hours_left))


def gate_decision(decision: Any, status: BudgetStatus) -> Any:
    """``decision`` (:class:`~spotshift.placement.decision.Decision`) kept within the team's cap.

    A decision that starts no new spend is returned as it is. One that would (place, move,
    fallback to on demand) keeps its target when the target's price for the rest of the month
    (capped at the remaining work) fits; else the cheapest eligible candidate that fits, else
    ``stay`` (when running) or ``queue``, with the reason.
    """
    if not decision.changes_placement or decision.target is None:
        return decision
    b = status.budget
    remaining = decision.remaining_hours

    def cost(c: Any) -> float:
        return _month_cost(c.price_usd_hour, remaining, status.hours_left)

    running = decision.current_running and decision.current is not None
    cur = next((c for c in decision.candidates if c.key == decision.current.key), None) if running else None
    if status.fits(cost(decision.target)):
        return decision
    if cur is not None and cost(decision.target) <= cost(cur):
        return decision  # a move to a cheaper place lowers the spend already started
    over = (
        f"budget: {decision.target.location} {decision.target.quote.market} at {decision.target.price_usd_hour:.2f} USD/h "
        f"would add {cost(decision.target):,.2f} USD this month to team {b.name}'s "
        f"{status.used_usd:,.2f} USD (spent + running), over its {b.monthly_usd:,.2f} USD monthly limit"
    )
    fitting = sorted(
        (c for c in decision.candidates if c.eligible and status.fits(cost(c))),
        key=lambda c: c.price_usd_hour,
    )
    if fitting:
        alt = fitting[0]
        if running and alt.key == decision.current.key:
            action = "stay"
        elif running:
            action = "move"
        else:
            action = decision.action if decision.action != "move" else "place"
        return replace(
            decision,
            action=action,
            target=alt,
            reasons=(
                *decision.reasons,
                over,
                f"budget: cheapest candidate within the limit instead: {alt.location} {alt.quote.market} "
                f"at {alt.price_usd_hour:.2f} USD/h",
            ),
        )
    if running:
        return replace(
            decision,
            action="stay",
            target=cur,
            reasons=(*decision.reasons, over, "budget: stays where it runs"),
        )
    return replace(
        decision,
        action="queue",
        target=None,
        reasons=(
            *decision.reasons,
            over,
            "budget: queued until the team's budget allows it (next month or a raise)",
        ),
    )
