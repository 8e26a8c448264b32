"""sumi: the Sumi uniform diffusion language model and its recipe, built on discdiff.

``sumi.configs`` (ModelConfig, presets), ``sumi.Sumi`` (the transformer).
"""

from sumi import configs
from sumi.model import Sumi

__all__ = ["configs", "Sumi"]
