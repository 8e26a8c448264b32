"""The computational core of generation and scaling studies across families.

- :mod:`sumi.study.pareto`: :func:`pareto_front`, the speed-quality frontier
  (Sahoo et al. 2026, arXiv 2602.15014).
- :mod:`sumi.study.quality`: :func:`generative_perplexity` of samples under an autoregressive
  judge and the :func:`unigram_entropy` that exposes degenerate samples.
- :mod:`sumi.study.fit`: :func:`fit_power_law` of loss against compute with standard errors
  (Kaplan et al. 2020, arXiv 2001.08361) and :func:`compute_optimal`, the isoFLOP minimum
  (Hoffmann et al. 2022, arXiv 2203.15556, "Approach 2").
"""

from sumi.study.fit import IsoFlopMinimum, PowerLaw, compute_optimal, fit_power_law
from sumi.study.pareto import pareto_front
from sumi.study.quality import GenerativePerplexity, generative_perplexity, unigram_entropy

__all__ = ["GenerativePerplexity", "IsoFlopMinimum", "PowerLaw", "compute_optimal", "fit_power_law",
           "generative_perplexity", "pareto_front", "unigram_entropy"]
