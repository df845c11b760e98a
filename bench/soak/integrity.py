"""The soak's integrity check, once the traffic stopped and the service is idle: the checks listed in
bench/soak/__init__.py, each bounded (Prober)."""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.store import point_id
from bench.live import Server
from bench.soak.ledger import Ledger
from bench.soak.traffic import Variants

logger = logging.getLogger(__name__)
SAMPLE = 50  # uploads whose own photo is searched for


# ------------------------------------------------------------------------------------------------ checks
class Prober:
    """The integrity phase's requests, bounded: each has a timeout, the phase has a deadline, and after
    BREAKER transport failures in a row the service is taken as unresponsive and the rest are not sent."""

    BREAKER = 5

    def __init__(self, http: httpx.Client, seconds: float) -> None:
        self.http = http
        self.deadline = time.monotonic() + seconds
        self.failures = 0
        self.unanswered = 0

    @property
    def given_up(self) -> bool:
        return self.failures >= self.BREAKER or time.monotonic() > self.deadline

    def send(
        self, method: str, path: str, *, force: bool = False, **kwargs: object
    ) -> tuple[str, httpx.Response | None]:
        """(status, response): the status code as text, or why there is none (the error's name, "skipped").
        force: send it even when the phase has given up."""
        if self.given_up and not force:
            self.unanswered += 1
            return "skipped", None
        try:
            response = self.http.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            self.failures += 1
            self.unanswered += 1
            return type(exc).__name__, None
        self.failures = 0
        return str(response.status_code), response

    def status(self, method: str, path: str, *, force: bool = False, **kwargs: object) -> str:
        return self.send(method, path, force=force, **kwargs)[0]


def settle(probe: Prober, seconds: float = 90.0) -> None:
    """Wait (bounded) until no inference runs or waits, twice in a row 2 s apart (writes after inference
    finish within that)."""
    deadline = time.monotonic() + seconds
    quiet = 0
    while time.monotonic() < deadline and quiet < 2 and not probe.given_up:
        status, response = probe.send("GET", "/status")
        try:
            body = response.json() if status == "200" and response is not None else {}
        except ValueError:
            body = {}
        quiet = quiet + 1 if body and not body.get("inference_in_use") and not body.get("inference_waiting") else 0
        time.sleep(2.0)


def resolve(probe: Prober, ledger: Ledger) -> tuple[int, int, int]:
    """The uncertain uploads' live faces, from the service: a face is there when its thumbnail is served (200),
    gone when it is not (404). Returns (uploads resolved, faces found, uploads left unresolved: no clear answer)."""
    uploads = [u for u in ledger.uploads.values() if u.state in ("uncertain", "pending")]
    found = unresolved = 0
    for u in uploads:
        if u.ids:  # answered, then a delete's outcome was lost: its ids are known
            candidates = set(u.live)
            answers = {i: probe.status("GET", f"/thumbs/{i}") for i in sorted(candidates)}
            u.live = {i for i, status in answers.items() if status == "200"}
            ledger.deleted |= {i for i, status in answers.items() if status == "404"}
            unclear = any(status not in ("200", "404") for status in answers.values())
        else:  # no answer to the upload: the faces of one image are written together, ids 0..n-1
            u.live = set()
            unclear = False
            for index in range(128):
                pid = point_id(u.sha, index)
                status = probe.status("GET", f"/thumbs/{pid}")
                if status != "200":
                    unclear = status != "404"
                    break
                u.live.add(pid)
            u.ids = sorted(u.live)
        unresolved += unclear
        found += len(u.live)
    return len(uploads), found, unresolved


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def stored_files(thumbs: Path) -> tuple[set[str], list[Path]]:
    """Ids of the thumbnail files in place, and the files left under .pending."""
    ids = {p.stem for p in thumbs.glob("*/*.jpg") if p.parent.name != ".pending"}
    pending = [p for p in (thumbs / ".pending").iterdir()] if (thumbs / ".pending").is_dir() else []
    return ids, pending


def integrity(
    server: Server, ledger: Ledger, variants: Variants, baseline_vectors: int, rng: random.Random, seconds: float
) -> tuple[list[Check], str]:
    with httpx.Client(base_url=server.base_url, timeout=20) as http:
        probe = Prober(http, seconds)
        settle(probe)
        resolved, resolved_faces, unresolved = resolve(probe, ledger)
        live = set().union(*(u.live for u in ledger.uploads.values())) if ledger.uploads else set()
        deleted = ledger.deleted - live
        checks: list[Check] = []

        answers = Counter(probe.status("GET", f"/thumbs/{i}") for i in sorted(live))
        checks.append(
            Check(
                "live faces served",
                answers["200"] == len(live),
                f"{answers['200']}/{len(live)} GET /thumbs 200"
                + (
                    f"; others {dict(answers - Counter({'200': answers['200']}))}"
                    if answers["200"] != len(live)
                    else ""
                ),
            )
        )

        with_live = [u for u in ledger.uploads.values() if u.live]
        with_deleted = [u for u in ledger.uploads.values() if set(u.ids) & deleted]
        sample = rng.sample(with_live, min(SAMPLE, len(with_live)))
        sampled = {u.key for u in sample}
        erased_sample = rng.sample(with_deleted, min(SAMPLE, len(with_deleted)))
        not_found: list[str] = []
        failed: Counter[str] = Counter()
        served_erased: list[str] = []
        searched = bad_bytes = found = 0
        for u in sample + erased_sample:
            photo, data = variants.make(u.key)
            if hashlib.sha256(data).hexdigest() != u.sha:
                bad_bytes += 1
                continue
            status, response = probe.send(
                "POST", "/api/search", params={"top_k": 100}, files={"file": ("own.jpg", data, "image/jpeg")}
            )
            if status != "200" or response is None:
                failed[status] += 1
                continue
            searched += 1
            matched = {m["id"] for f in response.json()["faces"] for m in f["matches"]}
            if u.key in sampled:
                if u.live <= matched:
                    found += 1
                else:
                    not_found.append(f"{u.source}: {len(u.live - matched)} of {len(u.live)} faces not found")
            served_erased.extend(sorted(matched & deleted))
        checks.append(
            Check(
                "found by own photo",
                not not_found and not failed and not bad_bytes and bool(sample),
                f"{found}/{len(sample)} uploads found all their live faces; {searched} searches "
                f"answered 200"
                + (f", others {dict(failed)}" if failed else "")
                + (f"; {bad_bytes} photos not rebuilt byte for byte" if bad_bytes else "")
                + (f"; e.g. {not_found[:2]}" if not_found else ""),
            )
        )

        answers = Counter(probe.status("GET", f"/thumbs/{i}") for i in sorted(deleted))
        checks.append(
            Check(
                "erased not served",
                answers["404"] == len(deleted) and not served_erased,
                f"{answers['404']}/{len(deleted)} deleted ids GET /thumbs 404"
                + (
                    f" (others {dict(answers - Counter({'404': answers['404']}))})"
                    if answers["404"] != len(deleted)
                    else ""
                )
                + f"; {len(set(served_erased))} deleted ids in {searched} searches",
            )
        )

        checks.append(
            Check(
                "delete answers",
                not ledger.anomalies,
                f"{len(ledger.anomalies)} deletes answered other than the ledger expected"
                + (f"; e.g. {ledger.anomalies[:2]}" if ledger.anomalies else ""),
            )
        )

        on_disk, pending = stored_files(server.thumbs_dir)
        extra, absent = on_disk - live, live - on_disk
        checks.append(
            Check(
                "files = ledger",
                not extra and not absent and not unresolved,
                f"{len(on_disk)} thumbnail files, {len(live)} live ids; {len(extra)} files without a "
                f"live id, {len(absent)} live ids without a file"
                + (f"; {unresolved} uploads the service could not settle" if unresolved else "")
                + (f"; orphans e.g. {sorted(extra)[:3]}" if extra else ""),
            )
        )

        status, response = probe.send("GET", "/status")
        vectors = int(response.json()["vectors"]) - baseline_vectors if status == "200" and response else None
        checks.append(
            Check(
                "vectors = ledger",
                vectors == len(live),
                f"GET /status {'vectors ' + str(vectors) if vectors is not None else status} "
                f"(+{baseline_vectors} before the run), ledger live {len(live)}",
            )
        )
        checks.append(
            Check(
                "nothing pending",
                not pending,
                f"{len(pending)} files under THUMBS_DIR/.pending"
                + (f", e.g. {[p.name for p in pending[:2]]}" if pending else ""),
            )
        )
        health = probe.status("GET", "/health", force=True)  # these two are asked whatever happened before
        checks.append(Check("healthy", health == "200", f"GET /health {health}"))
        # /health does not ask the engine: one search must still be answered.
        started = time.perf_counter()
        answer = probe.status(
            "POST", "/api/search", force=True, files={"file": ("q.jpg", variants.queries[0], "image/jpeg")}
        )
        checks.append(
            Check(
                "serves a search",
                answer == "200",
                f"POST /api/search {answer} in {time.perf_counter() - started:.1f} s",
            )
        )
    note = (
        f"{len(ledger.uploads)} uploads, {len(live)} faces live, {len(deleted)} deleted; {resolved} uploads "
        f"with an unknown outcome resolved from the service ({resolved_faces} faces present, {unresolved} "
        f"unsettled); {probe.unanswered} check requests unanswered"
    )
    return checks, note
