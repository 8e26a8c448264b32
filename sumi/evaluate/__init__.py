"""Evaluation: NELBO and bits per byte, the lm-eval-harness model ``sumi``, generation probes.

- :mod:`sumi.evaluate.likelihood`: :func:`nelbo_texts`, :class:`Scorer` (canvas rows, batched).
- :mod:`sumi.evaluate.harness`: the lm-eval ``LM`` registered as ``sumi`` (needs
  ``pip install .[eval]``); importing this package registers it when lm-eval is installed.
- :mod:`sumi.evaluate.probes`: the revision-budget and commitment-order probes;
  :mod:`sumi.evaluate.plots`: their figures.
"""

from importlib.util import find_spec

from sumi.evaluate.likelihood import NelboReport, Row, Scorer, continuation_row, document_rows, nelbo_texts

__all__ = ["NelboReport", "Row", "Scorer", "continuation_row", "document_rows", "nelbo_texts"]

if find_spec("lm_eval") is not None:  # optional: the [eval] extra
    from sumi.evaluate.harness import SumiLM  # noqa: F401  (registers the model "sumi")

    __all__.append("SumiLM")
