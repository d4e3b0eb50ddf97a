"""Rollout gates read from the serving containers' own ``/metrics`` (Prometheus text): error rate from the
``mlinfra_requests_total`` counter's 5xx share and p99 from the ``mlinfra_request_duration_seconds`` histogram,
both over the bake window only (a delta between two scrapes), for scoring routes only (infer, score)."""

from __future__ import annotations

from dataclasses import dataclass, field

SCORING_ROUTES = {"infer", "infer_version", "score"}


@dataclass
class Sample:
    """Totals of one scrape (or the sum over several containers, or a delta between two)."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count

    def __add__(self, o: Sample) -> Sample:
        keys = set(self.buckets) | set(o.buckets)
        return Sample(
            self.requests + o.requests,
            self.errors + o.errors,
            {k: self.buckets.get(k, 0) + o.buckets.get(k, 0) for k in keys},
        )

    def __sub__(self, o: Sample) -> Sample:
        keys = set(self.buckets) | set(o.buckets)
        return Sample(
            max(self.requests - o.requests, 0.0),
            max(self.errors - o.errors, 0.0),
            {k: max(self.buckets.get(k, 0) - o.buckets.get(k, 0), 0.0) for k in keys},
        )

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding quantile Q (seconds), as Prometheus' histogram_quantile would
        interpolate linearly inside the bucket; None without observations."""
        if not self.buckets:
            return None
        bounds = sorted(self.buckets)
        total = self.buckets[bounds[-1]]
        if total <= 0:
            return None
        rank = q * total
        prev_b, prev_c = 0.0, 0.0
        for b in bounds:
            c = self.buckets[b]
            if c >= rank:
                if b == float("inf"):
                    return prev_b
                if c == prev_c:
                    return b
                return prev_b + (b - prev_b) * (rank - prev_c) / (c - prev_c)
            prev_b, prev_c = b, c
        return bounds[-1]


def parse(text: str) -> Sample:
    """The scoring routes' request, 5xx and latency-bucket totals of one scrape. Parsed with prometheus-client's
    parser; a scrape that is not valid exposition text counts as nothing (the gate then sees no requests)."""
    from prometheus_client.parser import text_string_to_metric_families

    s = Sample()
    try:
        for family in text_string_to_metric_families(text):
            for m in family.samples:
                if m.labels.get("route") not in SCORING_ROUTES:
                    continue
                if m.name == "mlinfra_requests_total":
                    s.requests += m.value
                    if m.labels.get("code", "").startswith("5"):
                        s.errors += m.value
                elif m.name == "mlinfra_request_duration_seconds_bucket":
                    le = float(m.labels["le"])  # "+Inf" parses as inf
                    s.buckets[le] = s.buckets.get(le, 0.0) + m.value
    except ValueError:
        return Sample()
    return s


@dataclass
class GateResult:
    gate: str
    measured: float
    limit: float
    ok: bool
    unit: str = ""

    def describe(self) -> str:
        if self.gate == "min_requests":
            return f"min_requests: {self.measured:g} requests in the bake window, need ≥ {self.limit:g}"
        rel = "≤" if self.ok else ">"
        return f"{self.gate} {self.measured:.4g}{self.unit} {rel} limit {self.limit:g}{self.unit}"


def evaluate(
    delta: Sample, max_error_rate: float | None, max_p99_ms: float | None, min_requests: int
) -> list[GateResult]:
    out: list[GateResult] = []
    if min_requests:
        out.append(GateResult("min_requests", delta.requests, min_requests, delta.requests >= min_requests))
    if max_error_rate is not None and delta.requests:
        out.append(
            GateResult("max_error_rate", delta.error_rate, max_error_rate, delta.error_rate <= max_error_rate)
        )
    if max_p99_ms is not None and delta.requests:
        p99 = delta.quantile(0.99)
        if p99 is not None:
            out.append(GateResult("max_p99_ms", p99 * 1000, max_p99_ms, p99 * 1000 <= max_p99_ms, " ms"))
    return out
