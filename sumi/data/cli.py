"""``sumi data prepare``: tokenize local files into packed shards (see :mod:`sumi.data.packing`;
``--workers``, ``--resume``, ``--skip-bad``: docs/training.md, "Parallel, resumable, bad records");
with ``--prompted``, ``{"prompt", "response"}`` records into one row each (records too long
for a row are skipped and reported on stderr; docs/training.md, "Prompted data"); with ``--sft``,
chat records (``{"prompt", "response"}`` or ``{"messages": [...]}``) rendered by the chat template
into the same rows (docs/sft.md, "Data").

Wired into ``sumi.cli.COMMANDS`` as the ``data`` command: :func:`add_arguments` adds the
``prepare`` sub-command, :func:`run` does the work.  Mistakes in user input raise
``sumi.cli_common.UsageError`` (one line on stderr, exit status 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sumi.cli_common import UsageError, load_tokenizer

DEFAULT_SEQ_LEN = 1184  # the released recipe's pretraining / mid-training length (docs/math.md, "Sumi recipe facts")
DEFAULT_TOKENIZER = "default"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = sub.add_parser("prepare", help="tokenize files into packed shards (documents as BOS text EOS)",
                       description="Tokenize local files into packed uint32 shards of seq-len tokens "
                                   "(each document BOS text EOS) plus manifest.json, in parallel worker processes, "
                                   "resumably (docs/training.md, Data).")
    p.add_argument("--source", action="append", default=[], metavar="PATH_OR_GLOB",
                   help="a .txt/.md/.py file (one document), a .jsonl, .jsonl.gz or .jsonl.zst file (one document "
                        "per line), a .parquet file or a Dataset.save_to_disk directory (one per row), a directory "
                        "or a glob; repeat for more (parquet, saved datasets, .zst: pip install 'discdiff[data]')")
    p.add_argument("--stdlib", action="store_true",
                   help="add the training split of the running Python's standard library .py files (a corpus "
                        "every install has; the held-out split, stdlib:heldout, stays out: --source "
                        "stdlib:heldout adds it)")
    p.add_argument("--out", required=True, help="the directory to write (must not exist or be empty); it gets the "
                                                "shards, manifest.json (with their sha256) and tokenizer.json")
    p.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN,
                   help=f"tokens per row (default {DEFAULT_SEQ_LEN}, the released recipe)")
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                   help="a tokenizer.json or a directory holding one, or 'default': the embedded tokenizer")
    p.add_argument("--text-field", default=None, help="the JSON field or table column holding the text (default "
                                                      "'text')")
    p.add_argument("--prompted", action="store_true",
                   help="read records {prompt, response} (JSONL, plain or compressed, parquet, saved datasets): "
                        "one row each, BOS prompt, response, EOS fill, "
                        "then the pinned EOS BOS (generation's canvas); the prompt length is stored beside the row; "
                        "records longer than --seq-len are skipped and reported")
    p.add_argument("--prompt-field", default=None, help="with --prompted: the field holding the prompt (default "
                                                        "'prompt')")
    p.add_argument("--response-field", default=None, help="with --prompted: the field holding the response "
                                                          "(default 'response')")
    p.add_argument("--sft", action="store_true",
                   help="read chat records {prompt, response} or {messages: [{role, content}, ...]} (any record "
                        "format), the last "
                        "message the assistant's: each rendered by the chat template into a prompted row (the "
                        "conversation up to the answer is the prompt); records longer than --seq-len are skipped and "
                        "reported")
    p.add_argument("--chat-template", default=None, metavar="FILE",
                   help="with --sft: a JSON file of chat template fields (default: Sumi's chat tokens; see "
                        "docs/sft.md, Chat template)")
    p.add_argument("--shard-rows", type=int, default=None, help="rows per shard (default 8192)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous prepare's --out (a directory holding anything else is refused), and "
                        "discard an interrupted prepare's partial output")
    p.add_argument("--workers", type=int, default=None,
                   help="tokenizing processes (default: this machine's CPUs); the output is the same for any number")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted prepare of --out (same sources and settings) from its last shard; "
                        "starts afresh when there is none, does nothing when --out is complete")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip bad records (invalid UTF-8 or JSON, a text field missing, null or not a string) and "
                        "count them in the manifest, instead of stopping at the first")


def run(args: argparse.Namespace) -> int:
    if args.data_command != "prepare":
        raise UsageError(f"unknown action {args.data_command!r}")
    sources: list = list(args.source)
    if args.stdlib:
        from sumi.data.sources import stdlib_split

        sources += stdlib_split("train")  # the held-out files are never trained on
    if not sources:
        raise UsageError("no data: give --source PATH_OR_GLOB (repeatable) and/or --stdlib")
    if args.sft:
        given = [flag for flag, value in (("--prompted", args.prompted), ("--stdlib", args.stdlib),
                                          ("--text-field", args.text_field), ("--prompt-field", args.prompt_field),
                                          ("--response-field", args.response_field)) if value not in (None, False)]
        if given:
            raise UsageError(f"{given[0]} does not apply with --sft, which reads .jsonl chat records ({{prompt, "
                             "response}} or {messages}) given with --source")
    elif args.chat_template is not None:
        raise UsageError("--chat-template renders chat records: add --sft")
    elif args.prompted:
        if args.stdlib:
            raise UsageError("--stdlib is plain text (.py files): --prompted reads .jsonl records of a prompt and "
                             "a response; give them with --source")
        if args.text_field is not None:
            raise UsageError("--text-field names the text of plain data: with --prompted use --prompt-field and "
                             "--response-field")
    else:
        given = [flag for flag, value in (("--prompt-field", args.prompt_field),
                                          ("--response-field", args.response_field)) if value is not None]
        if given:
            raise UsageError(f"{given[0]} applies to prompted data only: add --prompted")
    if args.seq_len < 2:
        raise UsageError(f"--seq-len must be >= 2, got {args.seq_len}")
    if args.shard_rows is not None and args.shard_rows < 1:
        raise UsageError(f"--shard-rows must be >= 1, got {args.shard_rows}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    from sumi._fs import LockedError
    from sumi.data.packing import DEFAULT_SHARD_SEQUENCES, prepare
    from sumi.data.resume import PROGRESS, partial_dir
    from sumi.tokenizer import SumiTokenizer

    if args.tokenizer == DEFAULT_TOKENIZER:
        tokenizer = SumiTokenizer.default()
    else:
        if not Path(args.tokenizer).exists():
            raise UsageError(f"no tokenizer at {args.tokenizer} (or pass --tokenizer {DEFAULT_TOKENIZER})")
        tokenizer = load_tokenizer(args.tokenizer)
    template = None
    if args.chat_template is not None:
        from sumi.sft.template import ChatTemplate

        try:
            template = ChatTemplate.from_file(args.chat_template)
        except ValueError as e:
            raise UsageError(str(e)) from None
    progress_file = partial_dir(Path(args.out)) / PROGRESS
    before = _mtime(progress_file)

    def kept() -> str:  # progress saved by this run: say how to continue it
        if _mtime(progress_file) in (None, before):
            return ""
        return f"; the shards written so far are kept in {progress_file.parent}: continue with the same command and " \
               "--resume"

    try:
        m = prepare(sources, tokenizer, args.out, args.seq_len, text_field=args.text_field or "text",
                    shard_sequences=args.shard_rows or DEFAULT_SHARD_SEQUENCES, overwrite=args.overwrite,
                    progress=True, prompted=args.prompted, prompt_field=args.prompt_field or "prompt",
                    response_field=args.response_field or "response", sft=args.sft, template=template,
                    workers=args.workers, resume=args.resume, skip_bad=args.skip_bad)
    # bad sources or records, an --out in the way or in use, too little text, a tokenizer without the chat markers,
    # a format whose library is not installed
    except (OSError, ValueError, LockedError, ImportError) as e:
        raise UsageError(str(e) + kept()) from None
    except KeyboardInterrupt:
        print(f"sumi: interrupted{kept()}", file=sys.stderr)
        return 130
    _report_bad(m)
    if not m.prompted:
        print(f"sumi: wrote {args.out}: {m.total_rows} rows x {m.seq_len} tokens in {len(m.shards)} shards "
              f"({m.documents} documents from {m.files} files; {m.dropped_tokens} tokens of the last partial row "
              f"dropped)", file=sys.stderr)
        return 0
    print(f"sumi: wrote {args.out}: {m.total_rows} prompted rows x {m.seq_len} tokens in {len(m.shards)} shards "
          f"({m.documents} records from {m.files} files; {m.skipped_records} skipped: longer than a row)",
          file=sys.stderr)
    for e in m.skipped_examples:
        print(f"sumi: skipped {e['where']}: prompt {e['prompt_tokens']} tokens (BOS included) + response "
              f"{e['response_tokens']} + EOS BOS = {e['prompt_tokens'] + e['response_tokens'] + 2} > --seq-len "
              f"{m.seq_len}", file=sys.stderr)
    if m.skipped_records > len(m.skipped_examples):
        print(f"sumi: ... and {m.skipped_records - len(m.skipped_examples)} more (skipped_records in "
              f"{Path(args.out) / 'manifest.json'})", file=sys.stderr)
    return 0


def _report_bad(m) -> None:
    """The bad records skipped (``--skip-bad``), on stderr: the count and the first few."""
    if not m.bad_records:
        return
    print(f"sumi: skipped {m.bad_records} bad records (--skip-bad):", file=sys.stderr)
    for e in m.bad_examples:
        print(f"sumi:   {e['where']}: {e['error']}", file=sys.stderr)
    if m.bad_records > len(m.bad_examples):
        print(f"sumi:   ... and {m.bad_records - len(m.bad_examples)} more (bad_records in the manifest)",
              file=sys.stderr)


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
