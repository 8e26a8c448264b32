"""sumi: the Sumi uniform diffusion language model and its recipe, built on discdiff.

``sumi.configs`` (ModelConfig, presets), ``sumi.Sumi`` (the transformer),
``sumi.from_pretrained`` / ``sumi.save_pretrained`` (Hugging Face layout, safetensors only),
``sumi.SumiTokenizer`` (a local ``tokenizer.json``, or the embedded byte-level default),
``sumi.generate`` (the released canvas semantics on top of ``discdiff.samplers``), ``sumi`` CLI.
"""

from typing import TYPE_CHECKING

from sumi._lazy import lazy_exports

if TYPE_CHECKING:  # imported on first use (sumi._lazy): `import sumi.data.encoding` needs no torch
    from sumi import configs, hf
    from sumi.generation import GenerationOutput, generate
    from sumi.hf import convert, from_pretrained, save_pretrained
    from sumi.model import Sumi
    from sumi.tokenizer import SumiTokenizer

__all__ = ["configs", "hf", "Sumi", "SumiTokenizer", "from_pretrained", "save_pretrained", "convert",
           "generate", "GenerationOutput"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "configs": "sumi.configs", "hf": "sumi.hf", "convert": "sumi.hf", "from_pretrained": "sumi.hf",
    "save_pretrained": "sumi.hf", "generate": "sumi.generation", "GenerationOutput": "sumi.generation",
    "Sumi": "sumi.model", "SumiTokenizer": "sumi.tokenizer"})
