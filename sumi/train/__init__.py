"""Sumi's training recipe: the objective (noise sampling and loss terms, as sums for a global
token-count mean), the optimizer pieces (AdamW groups, the WSD schedule, gradient clipping) and
a counter of the host syncs a step makes (:func:`count_host_syncs`).
docs/math.md, "Loss" and "Sumi recipe facts"; arXiv 2606.19005."""

from sumi.train.objective import Noised, Objective, ObjectiveTerms
from sumi.train.optim import WSD, build_optimizer, clip_grad_norm, param_groups
from sumi.train.syncs import HostSyncs, count_host_syncs, optimizer_step_counters

__all__ = ["Objective", "Noised", "ObjectiveTerms", "build_optimizer", "param_groups", "WSD", "clip_grad_norm",
           "count_host_syncs", "optimizer_step_counters", "HostSyncs"]
