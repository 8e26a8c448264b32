"""The Hugging Face checkpoint layout of the released Sumi model (tohoku-nlp/sumi-7b; docs/sumi.md,
"Checkpoints"): ``config.json`` plus ``model.safetensors`` or shards
``model-0000i-of-0000N.safetensors`` listed in ``model.safetensors.index.json``.

* :func:`config_from_hf` / :func:`config_to_hf` (:mod:`sumi.hf.config`): ``config.json`` <->
  :class:`~sumi.configs.ModelConfig`; keys that would change the architecture are rejected,
  ``auto_map`` (remote code) is never followed and ``transformers`` is not needed.
* :func:`from_pretrained`, :func:`load_state_dict`, :func:`load_weights` (:mod:`sumi.hf.reading`):
  validated reading, memory-mapped, straight into a meta-built model; errors name the key or file.
* :func:`save_pretrained`, :func:`convert` (:mod:`sumi.hf.writing`): the directory is replaced
  as one atomic step, so a failure never leaves a mix of old and new weights.

Names, dtypes and :class:`CheckpointError` live in :mod:`sumi.hf.layout`.  Weights are read
only from safetensors: never ``torch.load``, pickle or remote code.
"""

# ARCHITECTURE, MODEL_TYPE, TRANSFORMERS_VERSION, UNIFORM_DIFFUSION_* and SIDE_FILES stay importable
# from sumi.hf as they were before the split (documented in their own modules).
from sumi.hf.config import (ARCHITECTURE, MODEL_TYPE, TRANSFORMERS_VERSION, UNIFORM_DIFFUSION_BETA_IS,
                            UNIFORM_DIFFUSION_Z_LOSS_STRENGTH, config_from_hf, config_to_hf)
from sumi.hf.layout import CONFIG_NAME, SIDE_FILES, WEIGHTS_INDEX_NAME, WEIGHTS_NAME, CheckpointError
from sumi.hf.reading import from_pretrained, load_state_dict, load_weights
from sumi.hf.writing import convert, save_pretrained

__all__ = [
    "CONFIG_NAME", "WEIGHTS_NAME", "WEIGHTS_INDEX_NAME", "CheckpointError",
    "config_from_hf", "config_to_hf", "load_state_dict", "load_weights", "from_pretrained", "save_pretrained",
    "convert",
]
