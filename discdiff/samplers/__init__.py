"""Samplers: step rules (one reverse step each), step grids, and one sampling loop.

``Ancestral(kernel)``, ``TauLeaping(kernel)``, ``Adaptive(kernel, tokens_per_step)``,
``Greedy()``, ``Confidence(kernel)``: ``.step(logits, z_t, lam_t, lam_s, frozen=None,
temperature=1.0, generator=None) -> z_s``.  ``sample(denoiser, sampler, canvas, log_snrs, ...)``
runs one along an ascending log-SNR grid (``linear_alpha_grid``, ``cosine_grid``,
``schedule_grid``), optionally recording a :class:`Trace`.  Every rule reads the denoiser's
distribution through :class:`Denoised`, which streams it from the logits (no vocabulary-sized
copy) and draws only where a token may change.
"""

from discdiff.samplers.adaptive import Adaptive
from discdiff.samplers.ancestral import Ancestral
from discdiff.samplers.base import KernelStepRule, StepOutput, StepRule
from discdiff.samplers.categorical import Denoised, Filters, inverse_cdf_draw
from discdiff.samplers.confidence import Confidence
from discdiff.samplers.greedy import Greedy
from discdiff.samplers.grids import check_grid, cosine_grid, linear_alpha_grid, schedule_grid
from discdiff.samplers.loop import SampleOutput, StepInfo, sample
from discdiff.samplers.tau_leaping import TauLeaping
from discdiff.samplers.trace import Trace

__all__ = [
    "StepRule", "KernelStepRule", "StepOutput", "Ancestral", "TauLeaping", "Adaptive", "Greedy", "Confidence",
    "Denoised", "Filters", "inverse_cdf_draw",
    "linear_alpha_grid", "cosine_grid", "schedule_grid", "check_grid",
    "sample", "SampleOutput", "StepInfo", "Trace",
]
