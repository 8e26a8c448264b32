"""The code path of ``sumi sft --init-from DIR --data FILE_OR_DIR``: the chat data prepared (or
reused) under ``OUT/data``, then ``sumi train``'s loop (:func:`sumi.train.command.train_command`)
with the instruction-tuning configuration (:func:`sumi.configs.train.train_sft`).  The embedded
default (:mod:`sumi.sft.embedded`) tunes through it too."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from sumi.cli_common import UsageError, load_tokenizer, writable_dir
from sumi.configs.train import SFT_PRESETS
from sumi.train.command import config_overrides, train_command

__all__ = ["tune", "prepared_rows", "rank0"]


def tune(args: argparse.Namespace, init_from: str | Path, data: str | Path, *, preset: str | None = None,
         seq_len: int | None = None, template=None):
    """Tune the model at ``init_from`` on ``data`` into ``args.out`` (module docstring), as the
    command does: returns :func:`sumi.train.command.train_command`'s result (a
    :class:`~sumi.train.loop.TrainResult`, or the exit status of a run that did not finish).
    ``preset``, ``seq_len``, ``template``: defaults for ``--preset``, ``--seq-len``,
    ``--chat-template`` (which win when given)."""
    from sumi.configs.train import sft_preset_for, train_sft
    from sumi.study.models import read_model_config

    init_from = Path(init_from)
    out = Path(args.out)

    def build() -> tuple:
        model = read_model_config(init_from, "--init-from")  # before anything heavy
        if args.objective is not None and args.objective != model.objective:
            raise UsageError(f"--objective {args.objective}: the model at {init_from} is a {model.objective!r} model, "
                             f"and tuning keeps its family (its weights are loaded as they are); drop --objective")
        tokenizer_file = init_from / "tokenizer.json"
        tokenizer = load_tokenizer(tokenizer_file)
        if (tokenizer.bos_id, tokenizer.eos_id) != (model.bos_token_id, model.eos_token_id):
            raise ValueError(f"the tokenizer of {init_from} has BOS/EOS ({tokenizer.bos_id}, {tokenizer.eos_id}), the "
                             f"model ({model.bos_token_id}, {model.eos_token_id}): rows would end with the wrong ids")
        name = args.preset or preset or sft_preset_for(model)
        if name is None:
            raise UsageError(f"the model at {init_from} has the shape of no preset: give --preset "
                             f"({', '.join(SFT_PRESETS)}) for the tuning values, and --set to adjust them")
        overrides = config_overrides(args)
        train_sft(name, model, 3, 1, str(init_from)).override(overrides)  # --set checked before any work
        writable_dir(out)
        rows_dir = prepared_rows(data, tokenizer, model, out, template=_template(args, template),
                                 seq_len=args.seq_len if args.seq_len is not None else seq_len,
                                 resume=args.resume, progress=args.progress and rank0())
        from sumi.data import Manifest

        manifest = Manifest.load(rows_dir)
        config = train_sft(name, model, manifest.seq_len, manifest.total_rows, str(init_from))
        return config.override(overrides), rows_dir, tokenizer_file

    return train_command("sft", args, build)


def _template(args: argparse.Namespace, default):
    """``--chat-template``'s template, else ``default`` (None: not given)."""
    from sumi.sft.template import ChatTemplate

    return default if args.chat_template is None else ChatTemplate.from_file(args.chat_template)  # errors name it


def prepared_rows(data: str | Path, tokenizer, model, out: Path, *, template, seq_len: int | None, resume: bool,
                  progress: bool) -> Path:
    """The prepared directory to tune on: ``data`` itself when it is one (chat or prompted rows,
    written with ``tokenizer``), or ``data`` (a ``.jsonl`` file) prepared into
    ``out/data/prepared`` with ``template`` (default :data:`~sumi.sft.DEFAULT_TEMPLATE`) at
    ``seq_len`` (default ``model.max_position_embeddings``, the canvas of
    :func:`~sumi.sft.chat_generate`), reused while
    ``out/data/prepared.json`` (the file's SHA-256, the tokenizer, template and ``seq_len``) is
    unchanged; a run with ``resume`` never prepares again.  Raises
    ``ValueError``/``FileNotFoundError``/``FileExistsError`` (one line) on bad input."""
    from sumi.sft.template import DEFAULT_TEMPLATE

    from sumi._fs import atomic_write, exclusive_lock, sha256_file
    from sumi.data import Manifest, prepare
    from sumi.data.manifest import MANIFEST, tokenizer_fingerprint
    from sumi.distributed import checkpoint as ckpt

    path = Path(data)
    if path.is_dir():
        if args_given := [f for f, v in (("--seq-len", seq_len), ("--chat-template", template)) if v is not None]:
            raise ValueError(f"{args_given[0]} applies when --data is a .jsonl file: the directory {path} was "
                             "prepared already (its rows have their length and template)")
        manifest = Manifest.load(path)
        if not manifest.prompted:
            raise ValueError(f"--data {path} holds plain packed text ({manifest.format}): tuning needs chat rows, "
                             "prepared with `sumi data prepare --sft` (or give the .jsonl file)")
        if manifest.tokenizer_sha256 != tokenizer_fingerprint(tokenizer):
            raise ValueError(f"--data {path} was prepared with another tokenizer than the model's: prepare it with "
                             "--tokenizer set to the model directory")
        return path
    if not path.is_file():
        raise FileNotFoundError(f"--data {path}: no such file or directory")
    if path.suffix != ".jsonl":
        raise ValueError(f"--data {path}: expected a .jsonl file of chat records or a prepared directory")
    seq_len = model.max_position_embeddings if seq_len is None else seq_len
    template = DEFAULT_TEMPLATE if template is None else template
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 3 <= seq_len <= model.max_position_embeddings:
        raise ValueError(f"--seq-len {seq_len}: expected 3 .. {model.max_position_embeddings} (the model's "
                         "max_position_embeddings)")
    target, key_file = out / "data" / "prepared", out / "data" / "prepared.json"
    key = {"sha256": sha256_file(path), "tokenizer_sha256": tokenizer_fingerprint(tokenizer), "seq_len": seq_len,
           "template": dataclasses.asdict(template)}
    # the ranks of a torchrun job take turns: the first prepares, the others find it prepared
    with exclusive_lock(out / "data" / ".prepare.lock", f"the prepared data {target}", wait=True):
        try:
            same = json.loads(key_file.read_text(encoding="utf-8")) == key and (target / MANIFEST).is_file()
        except (OSError, ValueError):
            same = False
        if same:
            return target
        if resume:
            raise ValueError(f"--resume: {target} was not prepared from this --data with this tokenizer, --seq-len "
                             "and --chat-template: resume with the ones the run started with")
        if ckpt.latest(out / "checkpoints") is not None:  # never replace the rows another run's checkpoints read
            raise FileExistsError(f"{out / 'checkpoints'} already holds checkpoints: pass --resume, or choose another "
                                  "--out")
        key_file.unlink(missing_ok=True)  # stale while the rows are replaced
        manifest = prepare([path], tokenizer, target, seq_len, sft=True, template=template, overwrite=True,
                           progress=progress)
        atomic_write(key_file, json.dumps(key, indent=2) + "\n")
    if rank0():  # what does not fit is said, never silently dropped
        skipped = ""
        if manifest.skipped_records:
            first = manifest.skipped_examples[0]
            skipped = (f"; {manifest.skipped_records} records skipped, longer than a row (the first at "
                       f"{first['where']}: {first['prompt_tokens'] + first['response_tokens'] + 2} tokens; all counted "
                       f"in {target / MANIFEST})")
        print(f"sumi sft: prepared {manifest.total_rows} rows x {seq_len} tokens from {path} into {target}{skipped}",
              file=sys.stderr)
    return target


def rank0() -> bool:
    """Whether this process is rank 0: of the process group once the loop has started it, else
    by torchrun's ``RANK`` (a single process is rank 0)."""
    import os

    import torch.distributed as dist

    return dist.get_rank() == 0 if dist.is_initialized() else os.environ.get("RANK", "0") == "0"
