"""The `python -m app.calibrate` command: the "same person" threshold measured on your own labelled photos."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from app.bootstrap import load_models, open_services
from app.calibration import CalibratedThreshold, ThresholdStore, build_pairs, read_labels
from app.calibration.embed import embed_labelled
from app.calibration.report import calibrate, calibration_figures, write_report
from app.cli.ingest_client import connect, probe_service
from app.config import LogFormat, Settings
from app.errors import OceanoError
from app.logs import configure_logging
from app.people import People

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
DEFAULT_FARS = "1e-2,1e-3,1e-4"

EPILOG = """\
The folder holds the photos and a labels file (CSV with a header: file,identity), one face per photo (the largest
face found stands for it). Every pair of photos is scored by cosine similarity with the model pack in use (MODEL_NAME
and the rest from the environment, as for the service); pairs of one identity are genuine, the others impostors.

The report (report.md, report.json, roc.png) gives the ROC, the equal error rate, and for each FAR target the
threshold, FAR and FRR with 95% bootstrap intervals, and the pairs decided wrongly. A FAR target is only resolvable
with at least 1/FAR impostor pairs: 1e-4 needs 10,000 of them.

--apply FAR stores the threshold for that FAR with the collection (STATE_DIR/calibration.json, per COLLECTION_NAME
and model fingerprint); the service uses it from its next start, and /status shows it.

--feedback uses the feedback users gave on matches (POST /api/feedback, the thumbs on the results page) as the
labelled pairs instead of a folder, scored from the stored vectors. When the service runs on this machine (it owns
the embedded store), the calibration runs inside it (POST /api/feedback/calibrate, an admin route: set
OCEANO_API_KEY to an admin key once keys exist); otherwise in this process. It prints the figures; --apply stores
the threshold, in force at once.

--enrolled uses the collection's own subjects the same way: faces of one subject are genuine pairs, faces of two
subjects impostor pairs, scored from the stored vectors; at most --per-subject faces of a subject (20) and --max-faces
in all (1000: 499,500 pairs). Inside the running service when one answers (POST /api/calibrate/subjects, admin).

examples:
  python -m app.calibrate ../shared/eval/faces-a
  python -m app.calibrate photos/ --labels photos/people.csv --apply 1e-3
  python -m app.calibrate --feedback --apply 1e-2
  python -m app.calibrate --enrolled --apply 1e-3
"""


def _fars(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not values or any(not 0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError("FAR targets lie strictly between 0 and 1")
    return values


def _far(text: str) -> float:
    return _fars(text)[0]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.calibrate",
        description="Measure the 'same person' threshold of the model pack in use on labelled photos.",
        epilog=EPILOG,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", type=Path, nargs="?", help="folder of labelled photos (not with --feedback)")
    parser.add_argument("--feedback", action="store_true", help="calibrate on the stored feedback instead of a folder")
    parser.add_argument(
        "--enrolled", action="store_true", help="calibrate on the collection's own subjects instead of a folder"
    )
    parser.add_argument("--per-subject", type=int, default=20, help="--enrolled: faces of a subject scored (20)")
    parser.add_argument("--max-faces", type=int, default=1000, help="--enrolled: faces scored in all (1000)")
    parser.add_argument("--url", help="the running service (default http://127.0.0.1:$PORT), for --feedback/--enrolled")
    parser.add_argument("--labels", type=Path, help="labels CSV (file,identity); default FOLDER/labels.csv")
    parser.add_argument("--out", type=Path, help="report folder; default STATE_DIR/calibration-report")
    parser.add_argument("--far", type=_fars, default=_fars(DEFAULT_FARS), help=f"FAR targets (default {DEFAULT_FARS})")
    parser.add_argument(
        "--apply", type=_far, metavar="FAR", help="store the threshold for this FAR with the collection"
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap rounds for the intervals (default 1000)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if [args.folder is not None, args.feedback, args.enrolled].count(True) != 1:
        parser.error("give a folder of labelled photos, or --feedback, or --enrolled")
    if not (2 <= args.per_subject <= 1000 and 3 <= args.max_faces <= 2000):
        parser.error("--per-subject lies in 2..1000 and --max-faces in 3..2000")
    settings = Settings()
    configure_logging(settings.log_level, json_lines=settings.log_format is LogFormat.JSON)
    if args.feedback:
        return calibrate_feedback(settings, far=args.apply or 1e-3, apply=args.apply is not None, url=args.url)
    if args.enrolled:
        return calibrate_enrolled(
            settings,
            far=args.apply or 1e-3,
            apply=args.apply is not None,
            url=args.url,
            per_subject=args.per_subject,
            max_faces=args.max_faces,
        )
    try:
        labels = read_labels(args.labels or args.folder / "labels.csv")
        engine, _ = load_models(settings)
        embedded = embed_labelled(engine, args.folder, labels, settings, progress=not args.quiet)
        if len(embedded.files) < 3:
            raise OceanoError(f"only {len(embedded.files)} photos gave a face: too few to calibrate")
        pairs = build_pairs(embedded.files, embedded.identities, embedded.matrix())
        chosen = args.apply if args.apply is not None else 1e-3
        result, roc = calibrate(
            pairs,
            pack=engine.pack.name,
            fingerprint=engine.fingerprint,
            far_targets=args.far,
            chosen_far=chosen,
            rounds=max(10, args.bootstrap),
            left_out=embedded.failures,
        )
        out = args.out or settings.state_dir / "calibration-report"
        paths = write_report(out, result, roc)
    except (OceanoError, ValueError) as exc:
        print(f"calibrate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(paths[1].read_text(), file=sys.stderr)
    print(f"report: {', '.join(str(p) for p in paths)}", file=sys.stderr)
    if args.apply is not None:
        point = result.chosen.point
        ThresholdStore(settings.state_dir).put(
            settings.collection_name,
            engine.fingerprint,
            CalibratedThreshold(
                threshold=point.threshold,
                source=f"python -m app.calibrate {args.folder}",
                far_target=args.apply,
                far=point.far,
                frr=point.frr,
                eer=result.eer.far,
                genuine_pairs=result.genuine_pairs,
                impostor_pairs=result.impostor_pairs,
                measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
            ),
        )
        print(
            f"applied: threshold {point.threshold:.4f} (FAR {point.far:.4f}, FRR {point.frr:.4f}) for collection "
            f"{settings.collection_name}, pack {engine.pack.name}",
            file=sys.stderr,
        )
    return EXIT_OK


def in_service_or_here(
    settings: Settings,
    *,
    url: str | None,
    route: str,
    params: dict[str, float | int | bool],
    here: Callable[[People], dict[str, object]],
) -> int:
    """A calibration on stored vectors: inside the running service when one answers (it owns the embedded store),
    through `route`, else `here` in this process over the store opened for it. Prints the figures as JSON."""
    url = (url or f"http://127.0.0.1:{settings.port}").rstrip("/")
    if probe_service(url):
        with connect(url) as client:
            response = client.post(route, params=params, timeout=600)
        if response.status_code != 200:
            print(f"calibrate: the service at {url} answered {response.status_code}: {response.text}", file=sys.stderr)
            return EXIT_FAILED
        figures = response.json()
    else:
        try:
            services = open_services(settings, batcher=False, jobs=False, state=False, build_index=False, keys=False)
        except OceanoError as exc:
            print(f"calibrate: {exc}", file=sys.stderr)
            return EXIT_FAILED
        try:
            assert services.people is not None
            figures = here(services.people)
        except OceanoError as exc:
            print(f"calibrate: {exc}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            services.close()
    print(json.dumps(figures, indent=2))
    return EXIT_OK


def calibrate_feedback(settings: Settings, *, far: float, apply: bool, url: str | None) -> int:
    """The threshold measured on the stored feedback."""

    def here(people: People) -> dict[str, object]:
        result, labelled = people.calibrate_feedback(far=far, apply=apply)
        return {**calibration_figures(result, far=far, apply=apply), "left_out": len(labelled.left_out)}

    return in_service_or_here(
        settings, url=url, route="/api/feedback/calibrate", params={"far": far, "apply": apply}, here=here
    )


def calibrate_enrolled(
    settings: Settings, *, far: float, apply: bool, url: str | None, per_subject: int, max_faces: int
) -> int:
    """The threshold measured on the collection's own subjects."""

    def here(people: People) -> dict[str, object]:
        result, sample = people.calibrate_enrolled(far=far, apply=apply, per_subject=per_subject, max_faces=max_faces)
        return {
            **calibration_figures(result, far=far, apply=apply),
            "subjects": sample.subjects,
            "faces": sample.faces,
            "scored": len(sample.files),
        }

    params: dict[str, float | int | bool] = {
        "far": far,
        "apply": apply,
        "per_subject": per_subject,
        "max_faces": max_faces,
    }
    return in_service_or_here(settings, url=url, route="/api/calibrate/subjects", params=params, here=here)
