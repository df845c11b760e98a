"""bench.overload's figures: the answers of one level (Level), and the table with the goals, PASS/FAIL beside
each (print_levels)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from bench.common import percentile

GOAL_503_P95_S = 0.5
GOAL_200_P95_S = 3.0
GOAL_THROUGHPUT_RATIO = 0.8


@dataclass(slots=True)
class Answer:
    status: str  # the HTTP status, or the name of the transport error
    latency: float  # seconds
    retry_after: bool
    done: float  # monotonic time of the answer


@dataclass
class Level:
    name: str
    clients: int
    duration: float
    answers: list[Answer] = field(default_factory=list)
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    loop_delays: list[float] = field(default_factory=list)  # the service's event loop (probe_service)
    generator_late: list[float] = field(default_factory=list)  # this load generator's event loop
    load: tuple[float, float] = (0.0, 0.0)  # the machine's 1-minute load average before and after

    def statuses(self) -> Counter[str]:
        return Counter(a.status for a in self.answers)

    def latencies(self, status: str) -> list[float]:
        return [a.latency for a in self.answers if a.status == status]

    def p(self, status: str, q: float) -> float | None:
        values = self.latencies(status)
        return percentile(values, q)

    @property
    def missing_retry_after(self) -> int:
        return sum(1 for a in self.answers if a.status == "503" and not a.retry_after)

    def share_within(self, status: str, seconds: float) -> float | None:
        values = self.latencies(status)
        return sum(1 for v in values if v <= seconds) / len(values) if values else None

    @property
    def others(self) -> int:
        return sum(1 for a in self.answers if a.status not in ("200", "503"))

    @property
    def throughput(self) -> float:
        return sum(1 for a in self.answers if a.status == "200") / self.duration


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.0f}"


def pct_ms(values: list[float], q: float) -> str:
    return ms(percentile(values, q))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_levels(levels: list[Level], acquire_timeout: float, honor_retry_after: bool) -> None:
    """The per-level table and the goals, PASS/FAIL beside each."""
    print(
        f"closed-loop POST /api/search, one-face 640 px JPEG, GPU_ACQUIRE_TIMEOUT={acquire_timeout:g}; "
        f"after a 503 clients {'wait Retry-After' if honor_retry_after else 'send again at once'}; latencies in "
        "ms; throughput: answers 200 per second"
    )
    header = (
        f"{'clients':>7} {'secs':>5} {'answers':>7} {'200':>6} {'503':>6} {'other':>5} {'200 p50':>7} "
        f"{'200 p95':>7} {'503 p50':>7} {'503 p95':>7} {'503 no R-A':>10} {'200/s':>7} {'srv CPU s':>9} "
        f"{'gen CPU s':>9}"
    )
    print(header)
    print("-" * len(header))
    for lv in levels:
        st = lv.statuses()
        print(
            f"{lv.clients:>7} {lv.duration:>5.0f} {len(lv.answers):>7} {st['200']:>6} {st['503']:>6} "
            f"{lv.others:>5} {ms(lv.p('200', 50)):>7} {ms(lv.p('200', 95)):>7} {ms(lv.p('503', 50)):>7} "
            f"{ms(lv.p('503', 95)):>7} {lv.missing_retry_after:>10} {lv.throughput:>7.1f} "
            f"{lv.server_cpu_s:>9.1f} {lv.client_cpu_s:>9.1f}"
        )
        fast = lv.share_within("503", GOAL_503_P95_S)
        print(
            f"{'':>7} 503s within {GOAL_503_P95_S * 1e3:.0f} ms: {'-' if fast is None else f'{fast:.0%}'}; "
            f"service event loop (404 probe) p50/p95 {pct_ms(lv.loop_delays, 50)}/{pct_ms(lv.loop_delays, 95)} "
            f"ms; load generator late p50/p95 {pct_ms(lv.generator_late, 50)}/{pct_ms(lv.generator_late, 95)} "
            f"ms; machine load average {lv.load[0]:.1f} -> {lv.load[1]:.1f} ({os.cpu_count()} CPUs)"
        )
        if lv.others:
            other = ", ".join(f"{k} x{v}" for k, v in sorted(st.items()) if k not in ("200", "503"))
            print(f"{'':>7} other answers: {other}")
    if not levels:
        return
    low, high = levels[0], levels[-1]
    p95_503, p95_200 = high.p("503", 95), high.p("200", 95)
    goals = [
        (
            f"{high.clients} clients: only 200 and 503 with Retry-After (other {high.others}, 503 without "
            f"Retry-After {high.missing_retry_after})",
            high.others == 0 and high.missing_retry_after == 0,
        ),
        (
            f"{high.clients} clients: 503 p95 {ms(p95_503)} ms <= {GOAL_503_P95_S * 1e3:.0f} ms",
            p95_503 is None or p95_503 <= GOAL_503_P95_S,
        ),
        (
            f"{high.clients} clients: 200 p95 {ms(p95_200)} ms <= {GOAL_200_P95_S * 1e3:.0f} ms",
            p95_200 is not None and p95_200 <= GOAL_200_P95_S,
        ),
    ]
    if high is not low:
        ratio = high.throughput / low.throughput if low.throughput else 0.0
        goals.append(
            (
                f"200-throughput at {high.clients} clients {high.throughput:.1f}/s >= {GOAL_THROUGHPUT_RATIO} "
                f"x {low.throughput:.1f}/s at {low.clients} clients (ratio {ratio:.2f})",
                ratio >= GOAL_THROUGHPUT_RATIO,
            )
        )
    for text, ok in goals:
        print(f"  {verdict(ok)}  {text}")
