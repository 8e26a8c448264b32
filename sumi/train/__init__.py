"""Sumi's training recipe: the objective of every family (:func:`build_objective`: noise sampling
and loss terms, as sums for a global token-count mean; docs/training.md, "Families"), the
optimizer pieces (AdamW groups, the WSD schedule, gradient clipping) and a counter of the host
syncs a step makes (:func:`count_host_syncs`).
docs/math.md, "Loss", "Family objectives" and "Sumi recipe facts"; arXiv 2606.19005."""

from sumi.train.objective import (
    AutoregressiveObjective, DiffusionObjective, MaskedCEObjective, Noised, Objective, ObjectiveTerms,
    TrainingObjective, build_objective,
)
from sumi.train.optim import WSD, build_optimizer, clip_grad_norm, param_groups
from sumi.train.syncs import HostSyncs, count_host_syncs, optimizer_step_counters

__all__ = ["build_objective", "TrainingObjective", "DiffusionObjective", "Objective", "MaskedCEObjective",
           "AutoregressiveObjective", "Noised", "ObjectiveTerms", "build_optimizer", "param_groups", "WSD",
           "clip_grad_norm", "count_host_syncs", "optimizer_step_counters", "HostSyncs"]
