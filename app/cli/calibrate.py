"""The `python -m app.calibrate` command: the "same person" threshold measured on your own labelled photos."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from app.bootstrap import load_models
from app.calibration import CalibratedThreshold, ThresholdStore, build_pairs, read_labels
from app.calibration.embed import embed_labelled
from app.calibration.report import calibrate, write_report
from app.config import LogFormat, Settings
from app.errors import OceanoError
from app.logs import configure_logging

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

examples:
  python -m app.calibrate ../shared/eval/faces-a
  python -m app.calibrate photos/ --labels photos/people.csv --apply 1e-3
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
    parser.add_argument("folder", type=Path, help="folder of labelled photos")
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
    args = build_parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, json_lines=settings.log_format is LogFormat.JSON)
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
