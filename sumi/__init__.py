"""sumi: the Sumi uniform diffusion language model and its recipe, built on discdiff.

``sumi.configs`` (ModelConfig, presets), ``sumi.Sumi`` (the transformer),
``sumi.from_pretrained`` / ``sumi.save_pretrained`` (Hugging Face layout, safetensors only),
``sumi.SumiTokenizer`` (a local ``tokenizer.json``, or the embedded byte-level default),
``sumi.generate`` (the released canvas semantics on top of ``discdiff.samplers``), ``sumi`` CLI.
"""

from sumi import configs, hf
from sumi.hf import convert, from_pretrained, save_pretrained
from sumi.generation import GenerationOutput, generate
from sumi.model import Sumi
from sumi.tokenizer import SumiTokenizer

__all__ = ["configs", "hf", "Sumi", "SumiTokenizer", "from_pretrained", "save_pretrained", "convert",
           "generate", "GenerationOutput"]
