"""The ``sumi`` command line: ``sumi generate``, ``convert``, ``data prepare``, ``train``, ``eval``, ``probe``.

Each subcommand is one ``(add_arguments, run)`` pair in :data:`COMMANDS`: ``add_arguments``
fills its argparse sub-parser, ``run(args)`` does the work and returns the exit status.
Mistakes in user input (bad flags, missing files, a prompt too long for the canvas) print one
line on stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TINY = "tiny"
TINY_SEED = 0  # the embedded default's weights are random, but the same on every run


class UsageError(Exception):
    """A mistake in the user's input: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- sumi generate ----------------------------------------------------------------------------
def _add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    from sumi.generate import SAMPLERS, SCHEDULES

    parser.add_argument("--model", required=True,
                        help=f"a checkpoint directory (Hugging Face layout), or '{TINY}': a tiny model with "
                             "random weights, built in memory (no files needed; its output is noise)")
    parser.add_argument("--prompt", required=True, help="the prompt text (BOS is added)")
    parser.add_argument("--tokenizer", help="a tokenizer.json (default: MODEL/tokenizer.json; the embedded "
                                            f"default tokenizer for --model {TINY})")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="the answer budget (default 256)")
    parser.add_argument("--canvas-length", type=int, default=2048, help="canvas positions (default 2048)")
    parser.add_argument("--steps", type=int, default=128, help="denoising steps = model calls (default 128)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="ancestral")
    parser.add_argument("--tokens-per-step", type=int, default=1, help="positions committed per step (adaptive)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="linear", help="step grid (default linear in alpha)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--min-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one, printed on stderr)")
    parser.add_argument("--no-denoise-end", dest="denoise_end", action="store_false",
                        help="freeze the canvas tail after the pinned EOS/BOS (pad ids, hidden from attention) "
                             "instead of denoising it with the answer")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="weights dtype (default: the checkpoint's)")


def _tiny_model(tokenizer, device: str):
    import sumi

    config = sumi.configs.tiny(vocab_size=tokenizer.vocab_size, bos_token_id=tokenizer.bos_id,
                               eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id,
                               max_position_embeddings=2048)  # room for the default canvas
    return sumi.Sumi.initialized(config, device=device, generator=torch.Generator(device=device).manual_seed(TINY_SEED))


def _load(args) -> tuple:
    """(model, tokenizer) from ``--model`` / ``--tokenizer``.  Paths are checked before anything
    heavy is imported or loaded."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.device(device)
    except RuntimeError as e:
        raise UsageError(f"bad --device {device!r}: {e}") from None
    if args.tokenizer is not None and not Path(args.tokenizer).is_file():
        raise UsageError(f"no tokenizer file {args.tokenizer}")
    if args.model == TINY:
        from sumi.tokenizer import SumiTokenizer

        tokenizer = SumiTokenizer.from_file(args.tokenizer) if args.tokenizer else SumiTokenizer.default()
        print(f"sumi: --model {TINY}: a tiny model with random weights (untrained: expect noise)", file=sys.stderr)
        model = _tiny_model(tokenizer, device)
        return model.to(DTYPES[args.dtype]) if args.dtype else model, tokenizer
    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise UsageError(f"no model directory {args.model} (or pass --model {TINY})")
    tokenizer_path = Path(args.tokenizer) if args.tokenizer else model_dir / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise UsageError(f"no tokenizer at {tokenizer_path}; pass --tokenizer PATH")
    from sumi.hf import from_pretrained
    from sumi.tokenizer import SumiTokenizer

    try:
        model = from_pretrained(model_dir, dtype=DTYPES[args.dtype] if args.dtype else None, device=device)
        tokenizer = SumiTokenizer.from_file(tokenizer_path)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load {args.model}: {e}") from None
    config = model.config
    if (tokenizer.bos_id, tokenizer.eos_id) != (config.bos_token_id, config.eos_token_id):
        print(f"sumi: warning: the tokenizer's BOS/EOS ({tokenizer.bos_id}, {tokenizer.eos_id}) differ from the "
              f"model's ({config.bos_token_id}, {config.eos_token_id}); the canvas uses the model's", file=sys.stderr)
    return model, tokenizer


def _run_generate(args) -> int:
    from sumi.generate import generate

    model, tokenizer = _load(args)
    prompt = list(tokenizer.encode(args.prompt, add_bos=True))
    try:
        out = generate(model, [prompt], args.max_new_tokens, canvas_length=args.canvas_length, steps=args.steps,
                       sampler=args.sampler, tokens_per_step=args.tokens_per_step, schedule=args.schedule,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                       seed=args.seed, denoise_end=args.denoise_end, progress=True)
    except (ValueError, TypeError) as e:  # generate validates every input before it samples
        raise UsageError(str(e)) from None
    print(f"sumi: seed {out.seed}", file=sys.stderr)
    print(tokenizer.decode(out.tokens[0], skip_special_tokens=True))
    return 0


# -- sumi convert -----------------------------------------------------------------------------
def _add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="a checkpoint directory (Hugging Face layout)")
    parser.add_argument("dst", help="the directory to write (created if needed)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="weights dtype (default: keep src's)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest shard, e.g. 5GB or 500MiB (default 5GB)")


def _run_convert(args) -> int:
    from sumi.hf import convert

    if not Path(args.src).is_dir():
        raise UsageError(f"no checkpoint directory {args.src}")
    max_shard_size = int(args.max_shard_size) if args.max_shard_size.isdigit() else args.max_shard_size
    try:
        convert(args.src, args.dst, dtype=args.dtype, max_shard_size=max_shard_size)
    except (OSError, ValueError) as e:  # a bad size, a checkpoint that is not Sumi's, an unwritable dst
        raise UsageError(f"cannot convert {args.src}: {e}") from None
    print(f"sumi: wrote {args.dst}", file=sys.stderr)
    return 0


# -- sumi data / train / eval / probe: their own modules, imported lazily (keeps `sumi generate` light)
def _lazy(module: str) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]:
    """``(add_arguments, run)`` that import ``module`` (which defines both) only when called."""

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        importlib.import_module(module).add_arguments(parser)

    def run(args: argparse.Namespace) -> int:
        return importlib.import_module(module).run(args)

    return add_arguments, run


COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "generate": (_add_generate_arguments, _run_generate),
    "convert": (_add_convert_arguments, _run_convert),
    "data": _lazy("sumi.data.cli"),
    "train": _lazy("sumi.train.command"),
    "eval": _lazy("sumi.evaluate.cli"),
    "probe": _lazy("sumi.evaluate.probe_cli"),
}
HELP = {"generate": "generate an answer to a prompt (canvas semantics of the Sumi release)",
        "convert": "rewrite a checkpoint in another dtype and/or sharding (Hugging Face layout)",
        "data": "prepare training data: `sumi data prepare` tokenizes files into packed shards",
        "train": "train Sumi (`--preset tiny`: the embedded default on the Python standard library)",
        "eval": "evaluate: `sumi eval nelbo` (NELBO, bits per byte), `sumi eval harness` (lm-eval)",
        "probe": "generation dynamics: `sumi probe revision` (revision budget), `sumi probe commitment`"}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sumi", description="Sumi: a uniform-noise diffusion language model.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=HELP.get(name), description=HELP.get(name)))
    return parser


def main(argv: list[str] | None = None) -> int:
    """``sumi COMMAND ...``; returns the exit status (0), or raises ``SystemExit(2)`` on a user error."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except UsageError as e:
        print(f"sumi {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    sys.exit(main())
