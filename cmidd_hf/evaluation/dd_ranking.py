"""DD-Ranking's two scores of a distilled set with soft labels (Li et al., 2025, NUS-HPC-AI-Lab/DD-Ranking).

Soft labels lift random real images too, so a soft-label accuracy alone does not say how much the *images*
carry. DD-Ranking reports, per evaluation round ``r``:

* IOR (improvement over random) = acc(set, soft-label protocol)_r - acc(random real subset of the same IPC,
  the same soft-label protocol)_r: what the distilled images add over real ones under the same relabelling;
* HLR (hard-label recovery) = acc(whole training set, hard labels)_r - acc(set, hard labels)_r: how far the set
  is from the full data without the teacher's help (lower is better).

Rounds are paired by index (the evaluations share the seeds ``seed + r``); a whole-set accuracy measured once
(one run, or a known value, as DD-Ranking's own cache of full-data accuracies) is used for every round.
Scores are in accuracy points; the spread is the population std over rounds, as DD-Ranking's ``np.std``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .evaluate import EvaluationResult


@dataclass(frozen=True)
class DDRankingScores:
    """IOR and HLR (accuracy points, mean and std over rounds) and what they were computed from."""

    arch: str
    soft_protocol: str
    hard_protocol: str
    improvement_over_random: float
    improvement_over_random_std: float
    hard_label_recovery: float
    hard_label_recovery_std: float
    full_accuracy: float  # the whole training set under the hard-label protocol (%, mean of its runs)
    full_source: str  # how full_accuracy was obtained (its runs and epochs, or the provenance of a given value)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{self.arch}: IOR {self.improvement_over_random:+.2f} ± {self.improvement_over_random_std:.2f} "
                f"points ({self.soft_protocol}: set vs random real subset), HLR {self.hard_label_recovery:.2f} ± "
                f"{self.hard_label_recovery_std:.2f} points ({self.hard_protocol}: whole training set "
                f"{self.full_accuracy:.2f} % vs set)")


def dd_ranking_scores(
    soft: EvaluationResult,
    random_soft: EvaluationResult,
    hard: EvaluationResult,
    full_hard: EvaluationResult | float,
    full_source: str | None = None,
) -> DDRankingScores:
    """IOR and HLR from the four evaluations: the set and a random real subset under a soft-label protocol, the
    set and the whole training set under a hard-label protocol (``full_hard``: its result, or an accuracy in
    [0, 1] measured elsewhere, then say where in ``full_source``)."""
    if soft.runs != random_soft.runs or soft.runs != hard.runs:
        raise ValueError(f"rounds must pair up: set {soft.runs} (soft) / {hard.runs} (hard) runs, random subset "
                         f"{random_soft.runs}")
    if soft.protocol != random_soft.protocol or soft.arch != random_soft.arch or soft.arch != hard.arch:
        raise ValueError("IOR compares the set and the random subset under the same protocol and architecture")
    if isinstance(full_hard, EvaluationResult):
        if full_hard.protocol != hard.protocol or full_hard.arch != hard.arch:
            raise ValueError("HLR compares the whole set and the set under the same hard-label protocol and "
                             "architecture")
        full = np.asarray(full_hard.accuracies) if full_hard.runs == hard.runs else \
            np.full(hard.runs, np.mean(full_hard.accuracies))
        full_source = full_source or f"{full_hard.runs} run(s) x {full_hard.epochs} epochs here"
    else:
        if not 0.0 <= float(full_hard) <= 1.0:
            raise ValueError(f"full_hard={full_hard}: a given whole-set accuracy is a fraction in [0, 1]")
        if not full_source:
            raise ValueError("a given whole-set accuracy needs its provenance (full_source)")
        full = np.full(hard.runs, float(full_hard))
    ior = 100 * (np.asarray(soft.accuracies) - np.asarray(random_soft.accuracies))
    hlr = 100 * (full - np.asarray(hard.accuracies))
    return DDRankingScores(soft.arch, soft.protocol, hard.protocol, float(ior.mean()), float(ior.std()),
                           float(hlr.mean()), float(hlr.std()), float(100 * full.mean()), full_source)
