"""The Kubernetes HPA (autoscaling/v2) replica calculation, for one External AverageValue metric.

A transcription of the controller's documented algorithm so the simulation scales the way a
cluster would: ``desired = ceil(current * metric / (target * current))`` with a 10 % tolerance,
then the behaviour: stabilisation windows (up: the lowest recommendation in the window, down:
the highest) and rate-limiting policies over a sliding period (``selectPolicy: Max``). It is a
model of the HPA, not a replacement: in a cluster, the HPA (or KEDA's) does this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Policy:
    kind: str  # "Pods" or "Percent"
    value: int
    period_seconds: float


@dataclass(frozen=True)
class Rules:
    stabilization_seconds: float
    policies: tuple[Policy, ...]
    # "Max": the policy allowing the biggest change wins; "Min": the smallest.
    select_policy: str = "Max"


@dataclass(frozen=True)
class Spec:
    target_average: float
    min_replicas: int
    max_replicas: int
    scale_up: Rules
    scale_down: Rules
    tolerance: float = 0.1


def chart_spec(
    target_average: float, min_replicas: int, max_replicas: int, time_scale: float
) -> Spec:
    """The Helm chart's ``worker.autoscaling.behavior``, every period multiplied by ``time_scale``.

    Up: no stabilisation, +100 % or +4 pods per 15 s, whichever is larger (Kubernetes' default).
    Down: 300 s stabilisation, then at most -50 % per 60 s.
    """
    return Spec(
        target_average,
        min_replicas,
        max_replicas,
        scale_up=Rules(
            0.0,
            (Policy("Percent", 100, 15 * time_scale), Policy("Pods", 4, 15 * time_scale)),
        ),
        scale_down=Rules(300 * time_scale, (Policy("Percent", 50, 60 * time_scale),), "Min"),
    )


@dataclass
class Autoscaler:
    spec: Spec
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    events: list[tuple[float, int]] = field(default_factory=list)  # (time, replicas added)

    def raw_desired(self, current: int, metric: float) -> int:
        usage_ratio = metric / (self.spec.target_average * current)
        if abs(1.0 - usage_ratio) <= self.spec.tolerance:
            return current
        return math.ceil(metric / self.spec.target_average)

    def desired(self, now: float, current: int, metric: float | None) -> int:
        """The replica count to set now; ``None`` (no metric) keeps the current count."""
        if metric is None:
            return current
        raw = self.raw_desired(current, metric)
        stabilized = self._stabilize(now, current, raw)
        limited = self._limit(now, current, stabilized)
        result = max(self.spec.min_replicas, min(self.spec.max_replicas, limited))
        if result != current:
            self.events.append((now, result - current))
        return result

    def _stabilize(self, now: float, current: int, raw: int) -> int:
        self.recommendations.append((now, raw))
        keep = max(
            self.spec.scale_up.stabilization_seconds, self.spec.scale_down.stabilization_seconds
        )
        self.recommendations = [(t, r) for t, r in self.recommendations if t > now - keep]
        up = min(
            [
                r
                for t, r in self.recommendations
                if t > now - self.spec.scale_up.stabilization_seconds
            ]
            + [raw]
        )
        down = max(
            [
                r
                for t, r in self.recommendations
                if t > now - self.spec.scale_down.stabilization_seconds
            ]
            + [raw]
        )
        recommendation = current
        if recommendation < up:
            recommendation = up
        if recommendation > down:
            recommendation = down
        return recommendation

    def _limit(self, now: float, current: int, desired: int) -> int:
        if desired > current:
            rules = self.spec.scale_up
            limits = [self._up_limit(now, current, p) for p in rules.policies]
            return min(desired, max(limits) if rules.select_policy == "Max" else min(limits))
        if desired < current:
            rules = self.spec.scale_down
            limits = [self._down_limit(now, current, p) for p in rules.policies]
            return max(desired, min(limits) if rules.select_policy == "Max" else max(limits))
        return desired

    def _changed_in(self, now: float, period: float, up: bool) -> int:
        return sum(abs(delta) for t, delta in self.events if t > now - period and (delta > 0) == up)

    def _up_limit(self, now: float, current: int, policy: Policy) -> int:
        start = current - self._changed_in(now, policy.period_seconds, up=True)
        if policy.kind == "Pods":
            return start + policy.value
        return math.ceil(start * (1 + policy.value / 100))

    def _down_limit(self, now: float, current: int, policy: Policy) -> int:
        start = current + self._changed_in(now, policy.period_seconds, up=False)
        if policy.kind == "Pods":
            return start - policy.value
        return math.floor(start * (1 - policy.value / 100))
