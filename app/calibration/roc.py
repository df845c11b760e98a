"""ROC of a same/different decision by cosine similarity, its equal error rate and operating points, with bootstrap
confidence intervals. Scores at or above the threshold are called "same person"."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Roc:
    """One point per distinct score, thresholds descending: far[i] / frr[i] when calling scores >= thresholds[i]
    the same person."""

    thresholds: np.ndarray
    far: np.ndarray  # impostor pairs accepted / impostor pairs
    frr: np.ndarray  # genuine pairs refused / genuine pairs


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    threshold: float
    far: float
    frr: float
    # The FAR asked for cannot be told apart with this many impostor pairs (fewer than 1 / FAR of them).
    resolvable: bool = True


def _check(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, np.float64)
    same = np.asarray(same, bool)
    if scores.shape != same.shape or scores.ndim != 1:
        raise ValueError("scores and labels must be two 1-d arrays of one length")
    if not same.any() or same.all():
        raise ValueError("calibration needs genuine and impostor pairs both")
    return scores, same


def roc_curve(scores: np.ndarray, same: np.ndarray) -> Roc:
    scores, same = _check(scores, same)
    order = np.argsort(-scores, kind="stable")
    ranked, labels = scores[order], same[order]
    accepted_genuine = np.cumsum(labels)
    accepted_impostor = np.cumsum(~labels)
    last = np.r_[ranked[1:] != ranked[:-1], True]  # the last index of each distinct score: ties move together
    genuine, impostor = labels.sum(), (~labels).sum()
    return Roc(
        thresholds=ranked[last],
        far=accepted_impostor[last] / impostor,
        frr=1.0 - accepted_genuine[last] / genuine,
    )


def equal_error_rate(scores: np.ndarray, same: np.ndarray) -> OperatingPoint:
    """Where FAR and FRR are closest; the EER is their mean there. Any threshold between that point's score and the
    next lower one decides every pair alike: the midpoint is given, the one farthest from both."""
    roc = roc_curve(scores, same)
    i = int(np.argmin(np.abs(roc.far - roc.frr)))
    eer = float((roc.far[i] + roc.frr[i]) / 2)
    below = roc.thresholds[i + 1] if i + 1 < roc.thresholds.size else roc.thresholds[i]
    return OperatingPoint(threshold=float((roc.thresholds[i] + below) / 2), far=eer, frr=eer)


def threshold_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> OperatingPoint:
    """The lowest threshold whose FAR is at most `far`: just above the impostor score that would push it over."""
    scores, same = _check(scores, same)
    impostor = np.sort(scores[~same])[::-1]
    allowed = int(np.floor(far * impostor.size))  # impostor pairs that may pass
    threshold = float(np.nextafter(impostor[allowed], np.inf)) if allowed < impostor.size else float(impostor[-1])
    genuine = scores[same]
    return OperatingPoint(
        threshold=threshold,
        far=float((impostor >= threshold).mean()),
        frr=float((genuine < threshold).mean()),
        resolvable=impostor.size * far >= 1.0,
    )


def bootstrap_interval(
    scores: np.ndarray,
    same: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    *,
    rounds: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """A percentile bootstrap interval of `statistic(scores, same)`, genuine and impostor pairs resampled apart (so
    every round has both)."""
    scores, same = _check(scores, same)
    rng = np.random.default_rng(seed)
    genuine, impostor = np.flatnonzero(same), np.flatnonzero(~same)
    values = np.empty(rounds)
    for r in range(rounds):  # one resample a round; each statistic is vectorised inside
        picked = np.concatenate([rng.choice(genuine, genuine.size), rng.choice(impostor, impostor.size)])
        values[r] = statistic(scores[picked], same[picked])
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
