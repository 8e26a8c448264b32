"""Guidance: steering a denoiser's distribution toward a condition at sampling time.

``cfg(cond_logits, uncond_logits, scale)`` is classifier-free guidance on the denoiser's
categorical distribution, ``log p_w = (1 + w) log p(x | c) - w log p(x)`` renormalized (Ho &
Salimans 2022, arXiv 2207.12598; D-CFG, Schiff et al. 2025, arXiv 2412.10193);
``Guided(cond_denoiser, uncond_denoiser, scale)`` (or ``Guided.batched(denoiser, scale)``, one
call on a doubled batch) is the guided denoiser, which every step rule and
:func:`discdiff.samplers.sample` take unchanged.  See docs/math.md, "Guidance".
"""

from discdiff.guidance.classifier_free import cfg, uncond_log_floor
from discdiff.guidance.guided import Guided

__all__ = ["cfg", "Guided", "uncond_log_floor"]
