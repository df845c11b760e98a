"""ROC, EER and operating points on score sets whose answers are known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from app.calibration import bootstrap_interval, equal_error_rate, roc_curve, threshold_at_far


def test_separated_scores_have_no_error_and_the_eer_threshold_lies_between() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    same = np.array([True, True, True, False, False, False])
    eer = equal_error_rate(scores, same)
    assert eer.far == 0.0 and eer.frr == 0.0
    assert eer.threshold == pytest.approx(0.5)  # midway between the lowest genuine and the highest impostor score
    roc = roc_curve(scores, same)
    assert list(roc.thresholds) == sorted(scores, reverse=True)
    assert roc.far[0] == 0.0 and roc.frr[-1] == 0.0 and roc.far[-1] == 1.0


def test_overlapping_scores_give_the_counted_rates() -> None:
    # genuine 0.9 0.6 0.4 0.2, impostor 0.5 0.3 0.1 0.05: at 0.45 one genuine of four refused... counted by hand
    scores = np.array([0.9, 0.6, 0.4, 0.2, 0.5, 0.3, 0.1, 0.05])
    same = np.array([True] * 4 + [False] * 4)
    point = threshold_at_far(scores, same, 0.25)  # one impostor of four may pass: 0.5 passes, 0.3 must not
    assert 0.3 < point.threshold <= 0.4
    assert point.far == 0.25 and point.frr == 0.25  # 0.2 refused
    strict = threshold_at_far(scores, same, 0.1)  # no impostor may pass
    assert strict.threshold > 0.5 and strict.far == 0.0 and strict.frr == 0.5
    assert not strict.resolvable  # 4 impostor pairs cannot tell FAR 0.1 from 0
    assert equal_error_rate(scores, same).far == 0.25


def test_ties_move_together() -> None:
    scores = np.array([0.5, 0.5, 0.5, 0.5])
    same = np.array([True, False, True, False])
    roc = roc_curve(scores, same)
    assert roc.thresholds.tolist() == [0.5] and roc.far.tolist() == [1.0] and roc.frr.tolist() == [0.0]


def test_bootstrap_interval_brackets_the_statistic_and_is_repeatable() -> None:
    rng = np.random.default_rng(1)
    scores = np.r_[rng.normal(0.6, 0.1, 200), rng.normal(0.1, 0.1, 2000)]
    same = np.r_[np.ones(200, bool), np.zeros(2000, bool)]
    value = threshold_at_far(scores, same, 0.01).threshold
    low, high = bootstrap_interval(scores, same, lambda s, y: threshold_at_far(s, y, 0.01).threshold, rounds=200)
    assert low <= value <= high and low < high
    assert (low, high) == bootstrap_interval(
        scores, same, lambda s, y: threshold_at_far(s, y, 0.01).threshold, rounds=200
    )


@pytest.mark.parametrize("same", [np.ones(3, bool), np.zeros(3, bool)])
def test_one_kind_of_pair_only_is_refused(same: np.ndarray) -> None:
    with pytest.raises(ValueError, match="genuine and impostor"):
        roc_curve(np.array([0.1, 0.2, 0.3]), same)
