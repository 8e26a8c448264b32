"""Evaluation: NELBO and bits per byte, the lm-eval-harness model ``sumi``, generation probes.

- :mod:`sumi.evaluate.likelihood`: :func:`nelbo_texts`, :class:`Scorer` (canvas rows, batched).
- :mod:`sumi.evaluate.harness`: the lm-eval ``LM`` ``SumiLM`` (needs ``pip install 'discdiff[eval]'``);
  importing this package registers it as ``sumi`` when lm-eval is installed.
- :mod:`sumi.evaluate.probes`: the revision-budget and commitment-order probes;
  :mod:`sumi.evaluate.plots`: their figures.
"""

from importlib.util import find_spec

from sumi.evaluate.compressors import compressor_bits_per_byte
from sumi.evaluate.likelihood import (NelboReport, Row, Scorer, continuation_row, document_rows, nelbo_texts,
                                      text_rows)

__all__ = ["NelboReport", "Row", "Scorer", "continuation_row", "document_rows", "nelbo_texts", "text_rows",
           "compressor_bits_per_byte"]



def _register_with_lm_eval() -> None:
    """Register ``sumi`` in lm-eval's model registry as a lazy placeholder: lm-eval itself is
    not imported beyond its registry (~40 ms, not the ~180 ms of its model base class), and the
    harness module loads only when lm-eval asks for the model.  lm-eval's own models are
    registered first: its ``get_model`` only loads them while the registry is empty, so a
    registry holding only ``sumi`` would hide ``hf``, ``dummy``, ..."""
    import lm_eval.models  # noqa: F401  (registers lm-eval's built-in models, lazily)
    from lm_eval.api.registry import model_registry

    if "sumi" not in model_registry:
        model_registry.register("sumi", target="sumi.evaluate.harness:SumiLM")


if find_spec("lm_eval") is not None:  # optional: the [eval] extra
    _register_with_lm_eval()
