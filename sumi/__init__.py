"""sumi: the Sumi uniform diffusion language model and its recipe, built on discdiff.

``sumi.configs`` (ModelConfig, presets), ``sumi.Sumi`` (the transformer),
``sumi.from_pretrained`` / ``model.save_pretrained`` (Hugging Face layout, safetensors only).
"""

from sumi import configs, hf
from sumi.hf import convert, from_pretrained, save_pretrained
from sumi.model import Sumi

__all__ = ["configs", "hf", "Sumi", "from_pretrained", "save_pretrained", "convert"]
