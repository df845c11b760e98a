"""The soak's printed report: answers per kind, the checks, memory, the service log's errors."""

from __future__ import annotations

import re
from collections import Counter

from bench.common import percentile
from bench.live import Server
from bench.soak.traffic import EXPECTED, Stats


# ------------------------------------------------------------------------------------------------ output
def ms(values: list[float], q: float) -> str:
    value = percentile(values, q)
    return f"{value * 1e3:.0f}" if value is not None else "-"


def print_answers(stats: Stats, seconds: float) -> int:
    """Answers per kind; returns how many were unexpected."""
    print(
        f"answers per kind over {seconds / 60:.1f} min (latency in ms; unexpected: outside the kind's expected answers)"
    )
    header = f"{'kind':<16} {'requests':>8} {'p50':>7} {'p95':>7} {'unexp.':>6}  statuses"
    print(header)
    print("-" * 100)
    unexpected_total = 0
    for kind in sorted(stats.answers):
        answers = stats.answers[kind]
        counts = Counter(s for s, _ in answers)
        unexpected = sum(n for s, n in counts.items() if s not in EXPECTED.get(kind, set()))
        unexpected_total += unexpected
        print(
            f"{kind:<16} {len(answers):>8} {ms([t for _, t in answers], 50):>7} {ms([t for _, t in answers], 95):>7} "
            f"{unexpected:>6}  {', '.join(f'{s} x{n}' for s, n in sorted(counts.items()))}"
        )
    total = sum(len(v) for v in stats.answers.values())
    print(f"{'all':<16} {total:>8}   ({total / seconds:.1f} requests/s)")
    last = [
        f"{kind} {status} at {stats.last[kind, status]:.0f} s"
        for kind, status in (("search", "200"), ("index", "201"))
        if (kind, status) in stats.last
    ]
    print(f"latest engine answers: {', '.join(last) or 'none'} (of {seconds:.0f} s)")
    return unexpected_total


def log_errors(server: Server) -> Counter[str]:
    """The service log's errors, counted by kind: the logged line (without its time) and the exception that ends
    its traceback, if any."""
    try:
        lines = server.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return Counter()
    found: Counter[str] = Counter()
    for i, line in enumerate(lines):
        if not (re.search(r" (ERROR|CRITICAL) ", line) or line.startswith("Exception in thread")):
            continue
        header = re.sub(r"^\d{4}-\d\d-\d\d [\d:,]+ ", "", line)
        exception = ""
        j = i + 1
        while j < len(lines) and j <= i + 3 and not lines[j].startswith("Traceback"):
            j += 1
        if j < len(lines) and lines[j].startswith("Traceback"):
            j += 1
            while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
                j += 1
            exception = lines[j] if j < len(lines) else ""
        found[f"{header} -> {exception}" if exception else header] += 1
    return found
