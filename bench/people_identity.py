"""Identity decisions on the labelled eval set through HTTP, at the "same person" threshold in force.

The real service (`python -m app` in a subprocess, fresh state) enrolls part of the set through POST /api/faces
with `subject` = the identity label, then every other photo is searched through POST /api/search and the largest
face's `identity` is read. Enrolled: the first half (rounded up) of the photos of each identity except the last
`--unenrolled` identities, which are never enrolled (their photos must come back unknown). Decisions counted:

- correct: the enrolled identity, same_person true; wrong: another subject given (a false accept);
- unknown: identity null (or same_person false) for an enrolled person (a false reject);
- rejected: an unenrolled person's photo comes back unknown (right); accepted: it is given a subject (wrong).

    python -m bench.people_identity [--unenrolled 3] [--top-k 10]
"""

from __future__ import annotations

import argparse
import math
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import cast

import httpx

from bench.common import eval_labels, setup_logging
from bench.live import live_server


def largest(faces: list[dict[str, object]]) -> dict[str, object] | None:
    def area(face: dict[str, object]) -> float:
        x1, y1, x2, y2 = cast("list[float]", face["bbox"])
        return float((x2 - x1) * (y2 - y1))

    return max(faces, key=area) if faces else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unenrolled", type=int, default=3, help="identities never enrolled (default 3)")
    parser.add_argument("--top-k", type=int, default=10, help="matches per face (default 10)")
    args = parser.parse_args(argv)
    setup_logging()
    by_identity: dict[str, list[Path]] = defaultdict(list)
    for path, identity in eval_labels():
        by_identity[identity].append(path)
    identities = sorted(by_identity)
    unenrolled = set(identities[len(identities) - args.unenrolled :])
    enroll, queries = [], []
    for identity in identities:
        photos = by_identity[identity]
        cut = 0 if identity in unenrolled else math.ceil(len(photos) / 2)
        enroll += [(p, identity) for p in photos[:cut]]
        queries += [(p, identity) for p in photos[cut:]]

    counts: Counter[str] = Counter()
    mistakes: list[str] = []
    with (
        live_server(env={"LOG_LEVEL": "warning", **os.environ}) as server,
        httpx.Client(base_url=server.base_url, timeout=120) as http,
    ):
        for path, identity in enroll:
            r = http.post("/api/faces", files={"file": (path.name, path.read_bytes())}, data={"subject": identity})
            r.raise_for_status()
        status = http.get("/status").json()
        for path, identity in queries:
            r = http.post("/api/search", params={"top_k": args.top_k}, files={"file": (path.name, path.read_bytes())})
            r.raise_for_status()
            face = largest(r.json()["faces"])
            who = face.get("identity") if face else None
            given = who["subject"] if isinstance(who, dict) and who["same_person"] else None
            if identity in unenrolled:
                outcome = "rejected" if given is None else "accepted"
            else:
                outcome = "correct" if given == identity else "unknown" if given is None else "wrong"
            counts[outcome] += 1
            if outcome in ("wrong", "accepted", "unknown"):
                mistakes.append(f"  {path.name} ({identity}): {outcome}, given {given}, identity {who}")
    known = counts["correct"] + counts["wrong"] + counts["unknown"]
    strangers = counts["rejected"] + counts["accepted"]
    print(
        f"threshold {status['threshold']:.4f} ({status['threshold_source']}), model {status['model']}; "
        f"{len(enroll)} photos enrolled ({len(identities) - len(unenrolled)} identities), {len(queries)} searched"
    )
    print(
        f"enrolled people ({known} searches): correct {counts['correct']}, wrong {counts['wrong']}, "
        f"unknown {counts['unknown']}  -> accuracy {counts['correct'] / max(1, known):.3f}"
    )
    print(
        f"unenrolled people ({strangers} searches): rejected {counts['rejected']}, given a subject {counts['accepted']}"
    )
    if mistakes:
        print("decisions that were not right:")
        print("\n".join(mistakes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
