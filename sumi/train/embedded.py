"""The embedded default ("main job"): train a tiny Sumi on the Python standard library's own
source files, found at run time, so nothing is downloaded beyond package installs.

The corpus is the training split of the standard library (``stdlib:train``,
:func:`sumi.data.sources.stdlib_split`): one file in 50 (``stdlib:heldout``, chosen by a hash of
its path) is never trained on, neither by the model nor by the tokenizer, so it can measure
held-out bits per byte (``sumi eval nelbo --data stdlib:heldout``).

Prepared data and the tokenizer are cached under ``$SUMI_CACHE`` (default ``~/.cache/sumi``),
keyed by the Python version, the corpus size and the split; a second run starts training at once.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from sumi._fs import exclusive_lock
from sumi.configs.train import TrainConfig, train_tiny
from sumi.data import prepare
from sumi.data.sources import HELDOUT_ONE_IN, stdlib_split
from sumi.tokenizer import CHAT_TOKENS, SumiTokenizer

CORPUS_BYTES = 12_000_000   # enough text for a 512-id BPE and thousands of training rows
TOKENIZER_VOCAB = 512
SAMPLE_PROMPTS = ("def ", "import ", "class ", "    return ")


def cache_dir() -> Path:
    return Path(os.environ.get("SUMI_CACHE", Path.home() / ".cache" / "sumi"))


def corpus_files(limit_bytes: int = CORPUS_BYTES) -> list[Path]:
    """What the embedded default trains on (model and tokenizer): the files of ``stdlib:train``
    in sorted order, each taken when it still fits in ``limit_bytes`` (on CPython 3.11 all 714,
    11.8 MB, fit); never a file of ``stdlib:heldout``."""
    chosen, total = [], 0
    for path in stdlib_split("train"):
        size = path.stat().st_size
        if total + size > limit_bytes:
            continue
        chosen.append(path)
        total += size
    if not chosen:
        raise FileNotFoundError("found no Python standard-library source files to train on")
    return chosen


def split_files(split: str) -> list[Path]:
    """The files of ``--data stdlib:SPLIT``: :func:`corpus_files` for ``"train"`` (the embedded
    default's data), every held-out file for ``"heldout"`` (another name: ``stdlib_split``'s error)."""
    return corpus_files() if split == "train" else stdlib_split(split)


def _root() -> Path:
    # the held-out share is in the key: a cache built before the split (or with another share)
    # trained its tokenizer on files that are now held out, so it is never reused
    version = f"py{sys.version_info.major}{sys.version_info.minor}"
    # the chat tokens too: a tokenizer cached before them lacks them (and has other merges)
    return cache_dir() / f"stdlib-{version}-{CORPUS_BYTES}-heldout1in{HELDOUT_ONE_IN}-chat{len(CHAT_TOKENS)}"


def tokenizer_path() -> Path:
    """Where the embedded default's ``tokenizer.json`` is cached."""
    return _root() / "tokenizer.json"


def tokenizer(*, progress: bool = True) -> SumiTokenizer:
    """The embedded default's tokenizer: a 512-id byte-level BPE trained on the corpus once, then
    read from the cache (written atomically: an interrupted first run leaves no broken file)."""
    tok_path = tokenizer_path()
    if tok_path.exists():
        return SumiTokenizer.from_file(tok_path)
    if progress:
        print("sumi: training the embedded tokenizer on the standard library (once)", file=sys.stderr)
    texts = (p.read_text(encoding="utf-8", errors="replace") for p in corpus_files())
    SumiTokenizer.train_byte_level(texts, TOKENIZER_VOCAB).save(tok_path)  # atomic: no truncated cache
    return SumiTokenizer.from_file(tok_path)


def prepare_embedded(seq_len: int, *, split: str = "train", progress: bool = True) -> tuple[Path, SumiTokenizer]:
    """The cached tokenizer and packed data (rows of ``seq_len`` tokens) of the embedded default,
    built on first use for each ``seq_len``.  ``split``: ``"train"`` (the default's data,
    :func:`corpus_files`) or ``"heldout"`` (the held-out files, ``--data stdlib:heldout``; the
    tokenizer is the same, trained on ``"train"`` only).  Processes that start together (the
    ranks of a torchrun job) take turns: the first builds, the others wait and then read the cache."""
    files = split_files(split)
    _root().mkdir(parents=True, exist_ok=True)
    with exclusive_lock(_root() / ".build.lock", f"the cache {_root()}", wait=True):
        tok = tokenizer(progress=progress)
        data_dir = _root() / (f"data-{seq_len}" if split == "train" else f"data-{split}-{seq_len}")
        if not (data_dir / "manifest.json").exists():
            prepare([str(p) for p in files], tok, data_dir, seq_len, overwrite=True, progress=progress)
    return data_dir, tok


def embedded_config(tokenizer: SumiTokenizer, **overrides) -> TrainConfig:
    config = train_tiny(tokenizer.vocab_size, **overrides)
    return config.override([f"model.bos_token_id={tokenizer.bos_id}", f"model.eos_token_id={tokenizer.eos_id}",
                            f"model.pad_token_id={tokenizer.pad_id}"])


def write_report(out_dir: Path, tokenizer: SumiTokenizer, *, seed: int = 0) -> None:
    """``samples.txt`` from the exported model (any family, through :func:`sumi.generate`) and
    ``loss.png`` from ``metrics.jsonl``."""
    import sumi
    from sumi._plot import figure, save

    model = sumi.from_pretrained(out_dir / "model")
    lines = []
    for i, prompt in enumerate(SAMPLE_PROMPTS):
        out = sumi.generate(model, tokenizer.encode(prompt), max_new_tokens=48, canvas_length=128, steps=32,
                            seed=seed + i)
        lines.append(f"--- prompt {prompt!r}\n{prompt}{tokenizer.decode(out.tokens[0])}\n")
    (out_dir / "samples.txt").write_text("\n".join(lines))
    records = _records(out_dir / "metrics.jsonl")
    fig = figure(6, 3.5)  # no pyplot: the caller's matplotlib backend and figures are left alone
    ax = fig.add_subplot(1, 1, 1)
    steps, losses = [r["step"] for r in records], [r["loss"] for r in records]
    ax.plot(steps, losses, lw=0.6, alpha=0.35, marker="o" if len(records) < 50 else None, ms=3, label="per step")
    smooth, ema = [], losses[0]
    for value in losses:  # each step draws its own noise level: the trend needs smoothing
        ema = 0.98 * ema + 0.02 * value
        smooth.append(ema)
    ax.plot(steps, smooth, lw=1.6, label="moving average (EMA 0.98)")
    ax.legend(loc="upper right")
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss (nats per token, {model.config.objective} objective)")
    ax.set_title(f"sumi tiny ({model.config.objective}) on the Python standard library")
    ax.grid(alpha=0.3)
    save(fig, out_dir / "loss.png")


def _records(path: Path) -> list[dict]:
    """The readable records of ``metrics.jsonl`` (a line cut by a crash is skipped)."""
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("loss"), (int, float)):
            records.append(record)
    return records
