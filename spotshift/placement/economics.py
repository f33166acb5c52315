"""Migration economics: should a job be placed, moved, left alone, sent to on-demand or queued?

:func:`decide` is the one decision function of spotshift. ``price_change_sensor`` calls it with
inputs assembled from the warehouse (:mod:`spotshift.placement.inputs`); ``spotshift simulate``
calls the same function tick by tick for its ``spotshift`` policy. It takes plain data and returns
a :class:`~spotshift.placement.decision.Decision` carrying the action, the target, every term and human-readable reasons.

The rules, in order:

1. **Deadline safety net** (:func:`deadline_safety_net`; the arithmetic is shared with every spot
   policy of the simulator, :mod:`spotshift.placement.deadline`):
   :func:`~spotshift.placement.deadline.deadline_requires_on_demand` — when the slack (time to deadline minus work left) no longer
   exceeds :func:`~spotshift.placement.deadline.safety_reserve_hours` (changeover + transfer to the fastest on-demand placement +
   one checkpoint interval of possibly lost work + one decision interval), go to on-demand and
   stay there (``fallback_on_demand``; ``stay`` once on on-demand).
2. **Not running** (new job, or preempted; :func:`place_job`): ``place`` on the best-ranked feasible candidate (see
   :mod:`spotshift.placement.scoring`). With no spot candidate: while the job is ahead of uniform
   progress (Can't Be Late) and spot capacity exists somewhere in principle, ``queue`` and wait for
   it; otherwise ``fallback_on_demand``; with nothing at all, ``queue``.
   Waiting for a cheaper price (a better-ranked spot candidate preempted now, back after its mean
   outage) is allowed only while the slack to the uniform-progress line
   (:func:`spotshift.placement.horizon.uniform_progress_slack_hours`: time left - work left x
   window / work; the required progress rate is work left / time left) covers the wait
   (:func:`spotshift.placement.waiting.worth_waiting_for`).
3. **Running** (:func:`stay_or_move`): ``move`` only when, for the best alternative,
   ``expected_savings - move_cost > margin`` where
   ``expected_savings = (current - target effective instance-hour) x remaining hours``,
   ``move_cost = egress (bytes not already at the target) + changeover downtime at the current
   price + staleness (work since the last checkpoint, redone at the target price) + risk``
   (``risk`` = expected preemption cost at the target minus at the current placement over the
   remaining runtime; negative when the target is safer) and
   ``margin = max(margin_min_usd, margin_fraction x remaining spend at the current price)``;
   not during the cooldown after a move, unless the current placement stopped qualifying (price
   cap, unfit, no longer allowed) or an interruption of the current placement is predicted and the
   move pays (:func:`spotshift.placement.horizon.ahead_of_interruption`).
   **Move later** is the third option beside staying and moving now: the cheapest spot candidate
   whose capacity is gone now (``no_spot``) and which is cheaper than the best alternative, reached
   after its expected outage (its savings and risk difference count for the share of the run left
   then, :func:`spotshift.placement.horizon.later_share`). When that move pays and nets more than
   moving now, the job stays and moves once, later (``PlacementParams.move_later``, off by default:
   it did not pay on the policy benchmark; :func:`spotshift.placement.waiting.move_later`).
4. **Feasibility** (:meth:`spotshift.placement.situation.Situation.feasible`, applied by the rules above): a plan is considered
   only if it can still finish by the deadline — an on-demand plan when ``work + plan overhead <= time left``, a spot plan when, after its overhead,
   the safety net is still possible. When no plan is feasible, the fastest on-demand one is chosen
   and the reasons say the deadline can no longer be met.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from spotshift.placement.deadline import (
    ahead_of_uniform_progress,
    deadline_requires_on_demand,
    safety_reserve_hours,
    window_hours,
)
from spotshift.placement.decision import Decision, DecisionInputs, MoveTerms
from spotshift.placement.horizon import (
    ahead_of_interruption,
    expected_preemptions,
    required_progress_rate,
    uniform_progress_slack_hours,
)
from spotshift.placement.params import PlacementParams
from spotshift.placement.scoring import Candidate, preemption_cost_usd
from spotshift.placement.situation import Situation
from spotshift.placement.waiting import move_later, worth_waiting_for


def _usd(x: float) -> str:
    return f"{x:,.2f} USD"


def _where(c: Candidate) -> str:
    q = c.quote
    return f"{q.location} {q.market} {q.instance_type} at {q.price_usd_hour:.2f} USD/h"


def decide(inputs: DecisionInputs, params: PlacementParams | None = None) -> Decision:
    """Decide place | move | stay | fallback_on_demand | queue for one job (rules in the module doc)."""
    s = Situation.of(inputs, params or PlacementParams())
    if s.remaining <= 0:
        s.reasons.append("no work left")
        return s.result("stay" if s.running else "queue", s.cur_cand if s.running else None)
    net = deadline_safety_net(s)
    if net is not None:
        return net
    return place_job(s) if s.cur is None else stay_or_move(s)


def deadline_safety_net(s: Situation) -> Decision | None:
    """Rule 1: when the slack no longer exceeds the reserve, go to on-demand and stay there;
    None while the deadline is safe (or the job has no deadline, or may not use spot)."""
    job, p, cur = s.job, s.p, s.cur
    if s.time_left is None or not job.spot_allowed:
        return None
    od = s.on_demand
    fastest_od_transfer = min((c.transfer_hours for c in od), default=0.0)
    ckpt_interval = s.checkpoint_interval_hours
    reserve = safety_reserve_hours(
        p.changeover_hours, fastest_od_transfer, ckpt_interval, p.decision_interval_hours
    )
    if not deadline_requires_on_demand(s.time_left, s.remaining, reserve):
        return None
    s.reasons.append(
        f"deadline safety net: slack {s.time_left - s.remaining:.2f} h <= reserve {reserve:.2f} h "
        f"(changeover {p.changeover_hours:g} h + copy {fastest_od_transfer:.2f} h + checkpoint interval "
        f"{ckpt_interval:.2f} h + decision interval {p.decision_interval_hours:.2f} h)"
    )
    if cur is not None and cur.market == "on_demand":
        s.reasons.append("already on on-demand: stay until the job finishes")
        return s.result("stay", s.cur_cand)
    if not od:
        s.reasons.append("no eligible on-demand quote")
        return s.result("stay", s.cur_cand) if cur is not None else s.result("queue", None)
    ok = [c for c in od if s.feasible(c)]
    target = ok[0] if ok else s.fastest_on_demand(od)
    s.reasons.append(f"switch to on-demand: {_where(target)}")
    return s.go("fallback_on_demand", target)


def place_job(s: Situation) -> Decision:
    """Rule 2: a job that is not running is placed on the best-ranked feasible candidate, waits for
    spot capacity while ahead of uniform progress, or falls back to on-demand."""
    inp, job = s.inp, s.job
    if inp.current is not None and not inp.current_running:
        s.reasons.append(
            f"{inp.current.location} {inp.current.market} is no longer running (preempted or stopped)"
        )
    eligible = s.eligible
    ok = [c for c in eligible if s.feasible(c)]
    waiting = worth_waiting_for(s.cands, ok[0] if ok else None, inp, s.p, s.time_left, s.deadline)
    if waiting is not None:
        return _wait_for(s, *waiting, best_available=ok[0] if ok else None)
    if ok and (ok[0].market == "spot" or not job.spot_allowed):
        s.reasons.append(f"best-ranked feasible candidate: {_where(ok[0])}")
        return s.go("place", ok[0])
    if any(c.market == "spot" for c in ok):
        # on-demand ranks first (unusual: spot above on-demand); it is the cheapest place
        s.reasons.append(f"on-demand ranks above every spot quote: {_where(ok[0])}")
        return s.go("place", ok[0])
    spot_quotes = [c for c in s.cands if c.market == "spot"]
    if job.spot_allowed:
        s.reasons.append(_why_no_spot(spot_quotes, eligible))
        if (
            s.p.wait_for_spot_when_ahead
            and s.time_left is not None
            and spot_quotes
            and ahead_of_uniform_progress(
                s.remaining, job.work_hours, s.time_left, window_hours(job, s.deadline)
            )
        ):
            s.reasons.append(
                f"ahead of uniform progress ({s.remaining:.1f} h of work left, {s.time_left:.1f} h to the "
                "deadline): waiting for spot capacity costs nothing"
            )
            return s.result("queue", None)
    od = s.on_demand
    action = "fallback_on_demand" if job.spot_allowed else "place"
    od_ok = [c for c in od if s.feasible(c)]
    if od_ok:
        s.reasons.append(f"fall back to on-demand: {_where(od_ok[0])}")
        return s.go(action, od_ok[0])
    if od:
        return s.go(action, s.fastest_on_demand(od))
    s.reasons.append(_why_nothing(s.cands))
    return s.result("queue", None)


def _wait_for(s: Situation, c: Candidate, outage: float, best_available: Candidate | None) -> Decision:
    """Queue for a preempted spot candidate worth waiting for, saying why the wait is affordable."""
    time_left = s.time_left or 0.0
    line = uniform_progress_slack_hours(
        s.remaining, s.job.work_hours, time_left, window_hours(s.job, s.deadline)
    )
    s.reasons.append(
        f"waiting for {_where(c)} (preempted, expected back in ~{outage:.1f} h): it ranks above "
        f"{_where(best_available) if best_available is not None else 'every available candidate'} and the job is ahead of "
        f"uniform progress ({s.remaining:.1f} h of work left, {s.time_left:.1f} h to the deadline: required rate "
        f"{required_progress_rate(s.remaining, time_left):.2f}, {line:.1f} h of slack to the line "
        f">= the {outage:.1f} h wait)"
    )
    return s.result("queue", None)


@dataclass(frozen=True)
class _StayCost:
    """What staying costs, against which each alternative's :class:`MoveTerms` are computed."""

    s: Situation
    price_usd_hour: float
    effective_hour_usd: float
    risk_usd: float
    margin_usd: float

    @classmethod
    def of(cls, s: Situation, price: float) -> _StayCost:
        cur, cur_cand, job, p = s.cur, s.cur_cand, s.job, s.p
        assert cur is not None
        eff = cur_cand.effective_instance_hour_usd if cur_cand is not None else price
        risk = 0.0
        if cur.market == "spot" and cur_cand is not None:
            risk = cur_cand.risk_gpu_hour_usd * job.gpu_count * cur_cand.amortization_hours
        elif cur.market == "spot":
            risk = expected_preemptions(s.inp.risks.get(cur.location), s.remaining) * preemption_cost_usd(
                price, job, s.inp.footprint, p
            )
        margin = max(p.margin_min_usd, p.margin_fraction * eff * s.remaining)
        return cls(s, price, eff, risk, margin)

    def terms_for(self, c: Candidate) -> MoveTerms:
        """The economics of moving to ``c`` now."""
        s = self.s
        target_risk = c.risk_gpu_hour_usd * s.job.gpu_count * c.amortization_hours
        return MoveTerms(
            expected_savings_usd=(self.effective_hour_usd - c.effective_instance_hour_usd) * s.remaining,
            egress_usd=c.transfer.egress_usd,
            downtime_usd=s.p.changeover_hours * self.price_usd_hour,
            staleness_usd=s.inp.checkpoint_age_hours * c.effective_instance_hour_usd,
            risk_usd=target_risk - self.risk_usd,
            margin_usd=self.margin_usd,
        )


def stay_or_move(s: Situation) -> Decision:
    """Rule 3: a running job moves to its best feasible alternative only when the move beats its
    cost by the margin, outside the cooldown (unless forced or ahead of a predicted interruption),
    and when moving later does not net more."""
    cur, inp, remaining = s.cur, s.inp, s.remaining
    assert cur is not None
    if cur.price_usd_hour is None:
        s.reasons.append(
            f"current placement {cur.location} {cur.market} {cur.instance_type} has no known price: stay"
        )
        return s.result("stay", s.cur_cand)
    forced = None
    if s.cur_cand is not None and not s.cur_cand.eligible:
        forced = "; ".join(s.cur_cand.rejected)
        s.reasons.append(f"current placement no longer qualifies: {forced}")
    stay = _StayCost.of(s, cur.price_usd_hour)
    scored = _scored_alternatives(s, stay)
    if not scored:
        s.reasons.append("no feasible alternative: stay")
        return s.result("stay", s.cur_cand)
    terms, alt = scored[0]
    s.reasons.append(
        f"best alternative {_where(alt)}: saves {_usd(terms.expected_savings_usd)} over {remaining:.1f} h; "
        f"move costs {_usd(terms.move_cost_usd)} (egress {terms.egress_usd:.2f}, downtime {terms.downtime_usd:.2f}, "
        f"staleness {terms.staleness_usd:.2f}, risk {terms.risk_usd:+.2f}); margin {_usd(terms.margin_usd)}"
    )
    if forced:
        s.reasons.append("move: the current placement no longer qualifies")
        return s.go("move", alt, terms)
    later = move_later(s.cands, alt, inp, s.p, remaining, stay.terms_for) if s.p.move_later else None
    if later is not None and later[1].pays and later[1].net_usd > terms.net_usd:
        w, lt, wait = later
        s.reasons.append(
            f"move later: {_where(w)} (spot capacity gone now, expected back in ~{wait:.1f} h) nets "
            f"{_usd(lt.net_usd)} over the {max(0.0, remaining - wait):.1f} h left then, more than moving now "
            f"({_usd(terms.net_usd)}): stay and move once"
        )
        return s.result("stay", s.cur_cand, terms)
    if inp.cooldown_until is not None and inp.now < inp.cooldown_until:
        if cur.market == "spot" and ahead_of_interruption(inp.risks.get(cur.location), terms.pays):
            s.reasons.append(
                f"move inside the cooldown, ahead of a predicted interruption of {cur.location}: net "
                f"{_usd(terms.net_usd)} > margin {_usd(terms.margin_usd)}"
            )
            return s.go("move", alt, terms)
        s.reasons.append(f"cooldown until {inp.cooldown_until.isoformat()}: stay")
        return s.result("stay", s.cur_cand, terms)
    if terms.pays:
        s.reasons.append(f"move: net {_usd(terms.net_usd)} > margin {_usd(terms.margin_usd)}")
        return s.go("move", alt, terms)
    s.reasons.append(f"stay: net {_usd(terms.net_usd)} <= margin {_usd(terms.margin_usd)}")
    return s.result("stay", s.cur_cand, terms)


def _scored_alternatives(s: Situation, stay: _StayCost) -> list[tuple[MoveTerms, Candidate]]:
    """The feasible alternatives among the best-ranked ``max_alternatives``, best net first."""
    assert s.cur is not None
    alternatives = [c for c in s.eligible if c.key != s.cur.key][: s.p.max_alternatives]
    infeasible = [c for c in alternatives if not s.feasible(c)]
    if infeasible:
        s.reasons.append(
            f"{len(infeasible)} alternative(s) skipped: after the move they could no longer finish by the deadline"
        )
    return sorted(
        ((stay.terms_for(c), c) for c in alternatives if s.feasible(c)),
        key=lambda tc: (-tc[0].net_usd, tc[1].expected_gpu_hour_usd, tc[1].location),
    )


def _why_no_spot(spot: Sequence[Candidate], eligible: Sequence[Candidate]) -> str:
    if not spot:
        return "no spot quote for this job in the snapshot"
    preempted = sum(1 for c in spot if any("preempt" in r or "no spot" in r for r in c.rejected))
    if any(c.market == "spot" for c in eligible):
        return "no spot candidate can finish by the deadline"
    if preempted:
        return f"no spot capacity: {preempted} of {len(spot)} spot quote(s) preempted or unavailable"
    return f"no spot candidate qualifies ({len(spot)} rejected)"


def _why_nothing(cands: Sequence[Candidate]) -> str:
    if not cands:
        return "queue: no quote at all in the snapshot"
    counts: dict[str, int] = {}
    for c in cands:
        for r in c.rejected:
            key = r.split(" at ")[0]
            counts[key] = counts.get(key, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
    return "queue: nothing qualifies (" + "; ".join(f"{k} x{n}" for k, n in top) + ")"


__all__ = ["deadline_safety_net", "decide", "place_job", "stay_or_move"]
