"""Generation and scaling studies across families: ``sumi study`` as a library.

- :mod:`sumi.study.pareto`: :func:`pareto_front`, the speed-quality frontier
  (Sahoo et al. 2026, arXiv 2602.15014); :mod:`sumi.study.frontier`: :func:`measure_pareto`,
  the frontier study (models x samplers x step counts).
- :mod:`sumi.study.quality`: :func:`generative_perplexity` of samples under an autoregressive
  judge and the :func:`unigram_entropy` that exposes degenerate samples.
- :mod:`sumi.study.fit`: :func:`fit_power_law` of loss against compute with standard errors
  (Kaplan et al. 2020, arXiv 2001.08361) and :func:`compute_optimal`, the isoFLOP minimum
  (Hoffmann et al. 2022, arXiv 2203.15556, "Approach 2"); :mod:`sumi.study.scaling`:
  :func:`measure_scaling`, the isoFLOP grid study.
- :mod:`sumi.study.canvas`: :func:`measure_canvas`, likelihood and samples against the canvas
  length.
- :mod:`sumi.study.runs`: :class:`Run` and :class:`RunCache`, the trainings of a study (each an
  ordinary ``sumi train`` run, cached by its command line, resumed when interrupted);
  :mod:`sumi.study.store`: :func:`open_study`, the study directory whose points are kept as they
  finish.
"""

from sumi.study.canvas import measure_canvas
from sumi.study.fit import IsoFlopMinimum, PowerLaw, compute_optimal, fit_power_law
from sumi.study.frontier import measure_pareto
from sumi.study.pareto import pareto_front
from sumi.study.quality import GenerativePerplexity, generative_perplexity, unigram_entropy
from sumi.study.runs import Run, RunCache, RunFailed
from sumi.study.scaling import measure_scaling
from sumi.study.store import StudyDir, open_study

__all__ = ["GenerativePerplexity", "IsoFlopMinimum", "PowerLaw", "Run", "RunCache", "RunFailed", "StudyDir",
           "compute_optimal", "fit_power_law", "generative_perplexity", "measure_canvas", "measure_pareto",
           "measure_scaling", "open_study", "pareto_front", "unigram_entropy"]
