"""The calibration report: report.json (every figure), report.md (for people), roc.png (matplotlib)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.calibration.pairs import Pairs
from app.calibration.roc import OperatingPoint, Roc, bootstrap_interval, equal_error_rate, roc_curve, threshold_at_far

WRONG_SHOWN = 20  # pairs listed as decided wrongly at the chosen threshold


@dataclass(frozen=True, slots=True)
class TargetResult:
    far_target: float
    point: OperatingPoint
    threshold_interval: tuple[float, float]
    frr_interval: tuple[float, float]


@dataclass(frozen=True, slots=True)
class Calibration:
    pack: str
    fingerprint: str
    genuine_pairs: int
    impostor_pairs: int
    eer: OperatingPoint
    eer_interval: tuple[float, float]
    targets: list[TargetResult]
    chosen: TargetResult
    wrong: list[dict[str, object]]
    left_out: dict[str, str]


def calibrate(
    pairs: Pairs,
    *,
    pack: str,
    fingerprint: str,
    far_targets: list[float],
    chosen_far: float,
    rounds: int,
    left_out: dict[str, str],
) -> tuple[Calibration, Roc]:
    scores, same = pairs.scores, pairs.same
    targets = []
    for far in sorted({*far_targets, chosen_far}, reverse=True):

        def threshold_of(s: np.ndarray, y: np.ndarray, far: float = far) -> float:
            return threshold_at_far(s, y, far).threshold

        def frr_of(s: np.ndarray, y: np.ndarray, far: float = far) -> float:
            return threshold_at_far(s, y, far).frr

        targets.append(
            TargetResult(
                far_target=far,
                point=threshold_at_far(scores, same, far),
                threshold_interval=bootstrap_interval(scores, same, threshold_of, rounds=rounds),
                frr_interval=bootstrap_interval(scores, same, frr_of, rounds=rounds),
            )
        )
    chosen = next(t for t in targets if t.far_target == chosen_far)
    eer = equal_error_rate(scores, same)
    wrong_mask = (scores >= chosen.point.threshold) != same
    margin = np.abs(scores - chosen.point.threshold)
    wrong: list[dict[str, object]] = [
        {
            "file1": pairs.files[int(pairs.first[i])],
            "file2": pairs.files[int(pairs.second[i])],
            "score": round(float(scores[i]), 4),
            "same": bool(same[i]),
            "called": "same" if scores[i] >= chosen.point.threshold else "different",
        }
        for i in sorted(np.flatnonzero(wrong_mask), key=lambda i: -margin[i])[:WRONG_SHOWN]
    ]
    result = Calibration(
        pack=pack,
        fingerprint=fingerprint,
        genuine_pairs=pairs.genuine,
        impostor_pairs=pairs.impostor,
        eer=eer,
        eer_interval=bootstrap_interval(scores, same, lambda s, y: equal_error_rate(s, y).far, rounds=rounds),
        targets=targets,
        chosen=chosen,
        wrong=wrong,
        left_out=left_out,
    )
    return result, roc_curve(scores, same)


def _markdown(c: Calibration) -> str:
    lines = [
        f"# Calibration: pack {c.pack}",
        "",
        f"{c.genuine_pairs} genuine and {c.impostor_pairs} impostor pairs; "
        f"EER {c.eer.far:.4f} (95% CI {c.eer_interval[0]:.4f}-{c.eer_interval[1]:.4f}) "
        f"at threshold {c.eer.threshold:.4f}.",
        "",
        "| FAR target | threshold (95% CI) | FAR | FRR (95% CI) | resolvable |",
        "|---|---|---|---|---|",
    ]
    for t in c.targets:
        lines.append(
            f"| {t.far_target:g} | {t.point.threshold:.4f} "
            f"({t.threshold_interval[0]:.4f}-{t.threshold_interval[1]:.4f}) "
            f"| {t.point.far:.4f} | {t.point.frr:.4f} ({t.frr_interval[0]:.4f}-{t.frr_interval[1]:.4f}) "
            f"| {'yes' if t.point.resolvable else 'no: fewer than 1/FAR impostor pairs'} |"
        )
    lines += [
        "",
        f"Pairs decided wrongly at the chosen threshold {c.chosen.point.threshold:.4f} (FAR {c.chosen.far_target:g}):",
        "",
    ]
    lines += [
        f"- {w['file1']} / {w['file2']}: {w['score']} "
        f"({'same' if w['same'] else 'different'} people, called {w['called']})"
        for w in c.wrong
    ] or ["- none"]
    if c.left_out:
        lines += ["", "Photos left out:", ""] + [f"- {f}: {why}" for f, why in c.left_out.items()]
    return "\n".join(lines) + "\n"


def write_report(out: Path, calibration: Calibration, roc: Roc) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.md", out / "roc.png"]
    paths[0].write_text(json.dumps(asdict(calibration), indent=2) + "\n")
    paths[1].write_text(_markdown(calibration))
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(np.maximum(roc.far, 1e-5), 1 - roc.frr, drawstyle="steps-post", label="ROC")
    for t in calibration.targets:
        ax.plot(max(t.point.far, 1e-5), 1 - t.point.frr, "o", label=f"FAR {t.far_target:g}: t={t.point.threshold:.3f}")
    ax.set_xscale("log")
    ax.set_xlim(1e-5, 1)
    ax.set_xlabel("false accept rate (impostor pairs accepted)")
    ax.set_ylabel("true accept rate (genuine pairs accepted)")
    ax.set_title(f"{calibration.pack}: EER {calibration.eer.far:.3f}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=110)
    plt.close(fig)
    return paths


def calibration_figures(result: Calibration, *, far: float, apply: bool) -> dict[str, Any]:
    """The figures of a calibration on stored vectors, as the routes answer them and the CLI prints them."""
    point = result.chosen.point
    return {
        "genuine_pairs": result.genuine_pairs,
        "impostor_pairs": result.impostor_pairs,
        "eer": result.eer.far,
        "far_target": far,
        "threshold": point.threshold,
        "far": point.far,
        "frr": point.frr,
        "applied": apply,
    }
