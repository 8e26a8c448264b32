"""The ``sumi`` command line: ``sumi generate``, ``convert``, ``data prepare``, ``train``, ``sft``, ``eval``,
``probe``, ``study``.

Each subcommand is one ``(add_arguments, run)`` pair in :data:`COMMANDS`: ``add_arguments``
fills its argparse sub-parser, ``run(args)`` does the work and returns the exit status.
Mistakes in user input (bad flags, missing files, a prompt too long for the canvas) and a
model that computes NaN/inf print one line on stderr and exit with status 2, without a
traceback.  Defaults that depend on the model (the canvas length) come from the model.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from sumi.cli_common import DTYPE_NAMES, UsageError, add_model_arguments, load_model

__all__ = ["main", "build_parser", "parse_args", "COMMANDS", "PASSTHROUGH", "UsageError"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- sumi generate ----------------------------------------------------------------------------
# The flags of canvas sampling: they do not apply to an "ar" model (left-to-right decoding), and
# given explicitly for one they are an error.  Their defaults are None so that "given" is visible.
_CANVAS_FLAGS = {"canvas_length": "--canvas-length", "steps": "--steps", "tokens_per_step": "--tokens-per-step",
                 "schedule": "--schedule", "denoise_end": "--no-denoise-end"}


def _add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    from sumi.generation import DEFAULT_CANVAS_LENGTH, SAMPLERS, SCHEDULES

    add_model_arguments(parser)
    parser.add_argument("--prompt", required=True, help="the prompt text (BOS is added); with --chat, one user message")
    parser.add_argument("--chat", action="store_true",
                        help="the prompt is one user message of a conversation, rendered with the chat template the "
                             "model was tuned with (`sumi data prepare --sft`); prints the answer's text, cut at the "
                             "template's end marker (see docs/sft.md, Generation)")
    parser.add_argument("--chat-template", default=None, metavar="FILE",
                        help="with --chat: a JSON file of chat template fields (default: Sumi's chat tokens)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="the answer budget (default 256; with --chat: the canvas after the prompt and the pinned "
                             "EOS BOS, as in training, or 128 for an 'ar' model)")
    parser.add_argument("--canvas-length", type=int, default=None,
                        help=f"canvas positions (default: min({DEFAULT_CANVAS_LENGTH}, the model's "
                             "max_position_embeddings); with --chat: the model's max_position_embeddings, or give the "
                             "--seq-len it was tuned at; diffusion families only")
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps = model calls (default 128); diffusion families only")
    parser.add_argument("--sampler", choices=SAMPLERS, default="ancestral",
                        help="ancestral (the default, every family: an exact posterior step, or for an 'ar' model a "
                             "draw of each next token), greedy (argmax), adaptive (most confident positions first), "
                             "confidence (LLaDA's unmasking; families with a mask state)")
    parser.add_argument("--tokens-per-step", type=int, default=None,
                        help="positions committed per step (adaptive: default 1; confidence: default the share a "
                             "masked-diffusion step unmasks)")
    parser.add_argument("--schedule", choices=SCHEDULES, default=None,
                        help="step grid (default linear in alpha); diffusion families only")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--min-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one, printed on stderr)")
    parser.add_argument("--no-denoise-end", dest="denoise_end", action="store_false", default=None,
                        help="freeze the canvas tail after the pinned EOS/BOS (pad ids, hidden from attention) "
                             "instead of denoising it with the answer; diffusion families only")
    parser.add_argument("--guidance-scale", type=float, default=0.0, metavar="W",
                        help="classifier-free guidance scale w >= -1 (default 0: none; -1: unconditional; > 0: "
                             "toward the prompt); each step runs the model on twice the rows. Needs a model trained "
                             "with condition dropout (--set cond_dropout=0.1) on prompted data (see docs/sumi.md, "
                             "Generation); diffusion families only")


def _run_generate(args) -> int:
    import secrets

    from sumi.generation import generate

    if args.chat_template is not None and not args.chat:
        raise UsageError("--chat-template renders the prompt as a conversation: add --chat")
    template = None
    if args.chat:
        from sumi.sft import DEFAULT_TEMPLATE, ChatTemplate

        try:
            template = DEFAULT_TEMPLATE if args.chat_template is None else ChatTemplate.from_file(args.chat_template)
        except ValueError as e:
            raise UsageError(str(e)) from None
    model, tokenizer = load_model(args)
    given = {name: getattr(args, name) for name in _CANVAS_FLAGS if getattr(args, name) is not None}
    if model.config.causal and given:
        flags = ", ".join(_CANVAS_FLAGS[name] for name in given)
        one = len(given) == 1
        raise UsageError(f"{flags} {'does' if one else 'do'} not apply to this 'ar' model (it decodes left to right, "
                         f"one token per model call); remove {'it' if one else 'them'}")
    seed = secrets.randbits(63) if args.seed is None else args.seed  # drawn here: printed for either path
    sampling = dict(sampler=args.sampler, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    min_p=args.min_p, seed=seed, progress=True, guidance_scale=args.guidance_scale, **given)
    try:
        if template is not None:
            from sumi.sft import chat_generate

            text = chat_generate(model, tokenizer, [args.prompt], template=template,
                                 max_new_tokens=args.max_new_tokens, **sampling)[0]
        else:
            prompt = list(tokenizer.encode(args.prompt, add_bos=True))
            max_new_tokens = 256 if args.max_new_tokens is None else args.max_new_tokens
            out = generate(model, [prompt], max_new_tokens, **sampling)
            text = tokenizer.decode(out.tokens[0], skip_special_tokens=True)
    except (ValueError, TypeError) as e:  # inputs (validated before sampling) or a model giving NaN/inf
        raise UsageError(str(e)) from None
    print(f"sumi: seed {seed}", file=sys.stderr)
    print(text)
    return 0


# -- sumi convert -----------------------------------------------------------------------------
def _add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="a checkpoint directory (Hugging Face layout)")
    parser.add_argument("dst", help="the directory to write (created if needed)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default=None, help="weights dtype (default: keep src's)")
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
    "sft": _lazy("sumi.sft.command"),
    "eval": _lazy("sumi.evaluate.cli"),
    "probe": _lazy("sumi.evaluate.probe_cli"),
    "study": _lazy("sumi.study.cli"),
}
HELP = {"generate": "generate an answer to a prompt (a diffusion canvas as released, or left to right for 'ar')",
        "convert": "rewrite a checkpoint in another dtype and/or sharding (Hugging Face layout)",
        "data": "prepare training data: `sumi data prepare` tokenizes files into packed shards",
        "train": "train Sumi (`--preset tiny`: the embedded default on the Python standard library)",
        "sft": "instruction-tune a trained model on chat data (`--preset tiny`: synthetic tasks, exact match before "
               "and after)",
        "eval": "evaluate: `sumi eval nelbo` (NELBO, bits per byte), `sumi eval harness` (lm-eval)",
        "probe": "generation dynamics: `sumi probe revision` (revision budget), `sumi probe commitment`",
        "study": "studies across families: `sumi study pareto` (speed-quality frontier), `scaling` (isoFLOP), "
                 "`canvas`"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``sumi`` parser with every command's arguments; with ``command``, only that command's
    (the others are listed by name and help, so their modules, and torch, are not imported:
    ``sumi --help`` and ``sumi data prepare`` start in a fraction of a second)."""
    parser = _Parser(prog="sumi", description="Sumi: a uniform-noise diffusion language model.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, _) in COMMANDS.items():
        subparser = sub.add_parser(name, help=HELP.get(name), description=HELP.get(name))
        if command is None or name == command:
            add_arguments(subparser)
    return parser


# Sub-actions whose arguments belong to another program: everything after them goes to
# ``args.<dest>`` verbatim (argparse's REMAINDER cannot start with an option such as ``--model``).
PASSTHROUGH: dict[tuple[str, ...], str] = {("eval", "harness"): "harness_args"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``argv`` (default ``sys.argv[1:]``) parsed by :func:`build_parser`, with the arguments of
    a :data:`PASSTHROUGH` sub-action kept verbatim."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # the command is the first argument (the top level has no options but --help); an unknown one
    # builds no command's arguments and argparse names the choices
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else "")
    for prefix, dest in PASSTHROUGH.items():
        if tuple(argv[:len(prefix)]) == prefix:
            args = parser.parse_args(list(prefix))
            setattr(args, dest, argv[len(prefix):])
            return args
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """``sumi COMMAND ...``; returns the exit status (0), or raises ``SystemExit(2)`` on a user error."""
    args = parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except UsageError as e:
        print(f"sumi {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    sys.exit(main())
