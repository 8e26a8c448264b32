"""Sumi's training recipe: the objective (noise sampling and loss terms, as sums for a global
token-count mean) and the optimizer pieces (AdamW groups, the WSD schedule, gradient clipping).
docs/math.md, "Loss" and "Sumi facts"; arXiv 2606.19005."""

from sumi.train.objective import Noised, Objective, ObjectiveTerms
from sumi.train.optim import WSD, build_optimizer, clip_grad_norm, param_groups

__all__ = ["Objective", "Noised", "ObjectiveTerms", "build_optimizer", "param_groups", "WSD", "clip_grad_norm"]
