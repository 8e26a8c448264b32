"""Guidance: steering a denoiser's distribution toward a condition at sampling time.

``cfg(cond_logits, uncond_logits, scale)`` is classifier-free guidance on the denoiser's
categorical distribution, ``log p_w = (1 + w) log p(x | c) - w log p(x)`` renormalized (Ho &
Salimans 2022, arXiv 2207.12598; D-CFG, Schiff et al. 2025, arXiv 2412.10193);
``Guided(cond_denoiser, uncond_denoiser, scale)`` (or ``Guided.batched(denoiser, scale)``, one
call on a doubled batch) is the guided denoiser, which every step rule and
:func:`discdiff.samplers.sample` take unchanged.  ``ClassifierGuided(rule, classifier, scale,
target=y)`` wraps a step rule with classifier guidance (D-CBG, Schiff et al. 2025, arXiv
2412.10193): the denoiser's distribution is tilted by a noisy classifier's
``log p(y | z, lambda)`` over one-token changes, enumerated exactly or to first order
(:func:`candidate_log_likelihoods`).  See docs/math.md, "Guidance" and "Classifier guidance".
"""

from discdiff.guidance.classifier import ClassifierGuided, candidate_log_likelihoods
from discdiff.guidance.classifier_free import cfg, uncond_log_floor
from discdiff.guidance.guided import Guided

__all__ = ["cfg", "Guided", "uncond_log_floor", "ClassifierGuided", "candidate_log_likelihoods"]
