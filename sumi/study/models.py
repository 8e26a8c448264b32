"""What the studies read: trained model directories and held-out text.

A model directory is the Hugging Face layout ``sumi train`` exports (``OUT/model``: config,
safetensors weights, ``tokenizer.json``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["load_model_dir", "heldout_texts", "same_tokenizer", "read_model_config", "check_judge", "model_name",
           "HELDOUT"]

HELDOUT = ("stdlib:heldout",)
"""The default held-out data: standard-library files the embedded default never trains on."""


def load_model_dir(path: str | os.PathLike, *, device: torch.device | str | None = None) -> tuple:
    """``(model, tokenizer)`` of a model directory, the model in eval mode on ``device`` (default cpu).

    Raises:
        ValueError: no directory, no ``tokenizer.json`` in it, or not a Sumi checkpoint
            (:func:`read_model_config`'s checks, before any weight is read).
    """
    from sumi.hf import from_pretrained
    from sumi.tokenizer import SumiTokenizer

    path = Path(path)
    read_model_config(path)
    model = from_pretrained(path, device=torch.device(device or "cpu"))
    model.eval()
    return model, SumiTokenizer.from_file(path / "tokenizer.json")


def same_tokenizer(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether model directories ``a`` and ``b`` hold byte-identical ``tokenizer.json`` files."""
    return (Path(a) / "tokenizer.json").read_bytes() == (Path(b) / "tokenizer.json").read_bytes()


def heldout_texts(data: Sequence[str] = HELDOUT, *, text_field: str = "text", max_documents: int | None = None,
                  ) -> list[str]:
    """The non-empty documents of ``data`` (paths, globs, ``stdlib:heldout``; as ``sumi eval
    nelbo --data``), the first ``max_documents`` of them when given.

    Raises:
        ValueError: no document found.
    """
    from sumi.data.sources import iter_documents

    texts = []
    for text in iter_documents(list(data), text_field=text_field):
        if text.strip():
            texts.append(text)
            if max_documents is not None and len(texts) >= max_documents:
                break
    if not texts:
        raise ValueError(f"no non-empty documents in {' '.join(data)}")
    return texts


def read_model_config(path: str | os.PathLike, what: str = "model"):
    """The :class:`~sumi.configs.ModelConfig` of a model directory, read from its ``config.json``
    without loading weights (to check settings before anything heavy runs).

    Raises:
        ValueError: no directory, no ``tokenizer.json``, or not a Sumi model directory (the
            message starts with ``what`` and the path).
    """
    from sumi.hf.config import config_from_hf
    from sumi.hf.reading import read_config

    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{what} {path}: no such model directory")
    if not (path / "tokenizer.json").is_file():
        raise ValueError(f"{what} {path}: no tokenizer.json (a model directory exported by `sumi train` has one)")
    try:
        return config_from_hf(read_config(path))
    except (OSError, ValueError) as e:
        raise ValueError(f"{what} {path}: not a Sumi model directory ({e})") from None


def check_judge(config, judge: str | os.PathLike, models: Sequence[str | os.PathLike] = ()) -> None:
    """Check that ``judge`` (a model directory whose config is ``config``) can judge the samples
    of ``models``: it is autoregressive and none of them (a model is never its own judge).

    Raises:
        ValueError: the judge is one of the models, or not autoregressive.
    """
    judge = Path(judge).resolve()
    for model in models:
        if Path(model).resolve() == judge:
            raise ValueError(f"{model} is also the judge: a model is never its own judge")
    if not config.causal:
        raise ValueError(f"the judge {judge} is a {config.objective!r} model; generative perplexity needs an "
                         "autoregressive judge (objective 'ar')")


def model_name(path: str | os.PathLike) -> str:
    """The name shown for a model directory: for the ``OUT/model`` of a ``sumi train`` run, the
    run's name (a run of a study's cache, ``FAMILY-KEY`` with its ``run.json``: the family); for
    any other directory, its own name."""
    path = Path(path).resolve()
    if path.name != "model":
        return path.name
    run = path.parent
    if (run / "run.json").is_file() and "-" in run.name:  # sumi.study.runs.RunCache names it FAMILY-KEY
        return run.name.rsplit("-", 1)[0]
    return run.name
