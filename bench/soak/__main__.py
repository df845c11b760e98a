"""python -m bench.soak: see bench/soak/__init__.py."""

from __future__ import annotations

import argparse
import logging
import os
import random
import time
import uuid
from pathlib import Path

import httpx

from bench.live import REPO, live_server, reset_peak
from bench.soak import __doc__ as DOC
from bench.soak.integrity import Check, integrity
from bench.soak.ledger import Ledger
from bench.soak.report import log_errors, print_answers
from bench.soak.traffic import Traffic, Variants

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=DOC, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="minutes of traffic (default 5)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--timeout", type=float, default=60.0, help="client seconds per request (default 60)")
    parser.add_argument("--chunked-mb", type=float, default=30.0, help="size of the chunked upload (default 30)")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples (default 5)")
    parser.add_argument(
        "--check-minutes", type=float, default=10.0, help="at most this long for the integrity checks (default 10)"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for the service (repeatable), e.g. --env GPU_ACQUIRE_TIMEOUT=2",
    )
    parser.add_argument("--app-dir", type=Path, default=REPO, help="checkout whose `app` is run (default: this)")
    parser.add_argument(
        "--state-dir", type=Path, help="the service's state folder, kept afterwards (default: a temporary one, removed)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 120 or not 1 <= args.clients <= 500:
        parser.error("--minutes must be in (0, 120], --clients in [1, 500]")
    env = dict(item.split("=", 1) for item in args.env if "=" in item)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise

    run = uuid.uuid4().hex[:8]
    variants = Variants(run)
    ledger = Ledger(run)
    if args.state_dir is not None and args.state_dir.exists() and any(args.state_dir.iterdir()):
        parser.error(f"--state-dir {args.state_dir} is not empty")
    with live_server(args.app_dir, env=env, prefix="oceano-soak-", state=args.state_dir) as server:
        traffic = Traffic(server, args, variants, ledger)
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            baseline_vectors = int(http.get("/status").json()["vectors"])
        reset_peak(server.pid)
        logger.info(
            "soak: %d clients for %.1f min against %s (%d photos, run %s)",
            args.clients,
            args.minutes,
            server.base_url,
            len(variants.images),
            run,
        )
        started, load_before = time.monotonic(), os.getloadavg()[0]
        samples = traffic.run(args.minutes * 60)
        load_after = os.getloadavg()[0]
        seconds = time.monotonic() - started
        alive = server.alive()
        if alive:
            logger.info("traffic stopped after %.0f s; integrity check", seconds)
            checks, note = integrity(
                server, ledger, variants, baseline_vectors, random.Random(args.seed), args.check_minutes * 60
            )
            memory = server.memory_kb()
        else:
            checks, note, memory = [Check("service alive", False, f"exited with {server.proc.returncode}")], "", {}
        errors = log_errors(server)

    print(
        f"soak: {args.clients} clients, {seconds / 60:.1f} min, service {args.app_dir.resolve()}, settings "
        f"{env or 'default'}; machine load average {load_before:.1f} -> {load_after:.1f} ({os.cpu_count()} CPUs)"
    )
    unexpected = print_answers(traffic.stats, seconds)
    print(
        f"  {'PASS' if not unexpected else 'FAIL'}  every answer among its kind's expected ones "
        f"({unexpected} unexpected)"
    )
    print(f"integrity ({note})")
    for c in checks:
        print(f"  {'PASS' if c.ok else 'FAIL'}  {c.name:<20} {c.detail}")
    rss = [kb for _, kb in samples]
    if rss:
        quarter = [rss[min(len(rss) - 1, round(q * (len(rss) - 1)))] / 1024 for q in (0, 0.25, 0.5, 0.75, 1)]
        print(
            f"memory: warm RSS {server.warm_rss_kb / 1024:.0f} MB; RSS over the run (0/25/50/75/100 %) "
            f"{' / '.join(f'{v:.0f}' for v in quarter)} MB, max sampled {max(rss) / 1024:.0f} MB"
        )
    if memory:
        print(
            f"memory at the end: RSS {memory['VmRSS'] / 1024:.0f} MB, peak (VmHWM, since the traffic began) "
            f"{memory['VmHWM'] / 1024:.0f} MB"
        )
    print(f"service log: {sum(errors.values())} errors" + (", by kind:" if errors else ""))
    for text, count in errors.most_common(10):
        print(f"  {count:>5} x {text[:220]}")
    raise SystemExit(0 if all(c.ok for c in checks) else 1)


if __name__ == "__main__":
    main()
