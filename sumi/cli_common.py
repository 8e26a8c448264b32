"""What the ``sumi`` subcommands share: the user-error type, the model/tokenizer arguments and
their loading, the thread count, and an early check that an output directory is writable.

:mod:`sumi.cli` imports the subcommand modules (lazily); they import this module, never
:mod:`sumi.cli`, so the command line has no import cycle.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that use it: `sumi --help` and `sumi data prepare`,
# which never touch a tensor, start without it (1.6 s and about 200 MB less)
DTYPE_NAMES = ("bfloat16", "float16", "float32")  # --dtype: torch dtypes by name
TINY = "tiny"
TINY_SEED = 0  # the embedded default's weights are random, but the same on every run
TINY_POSITIONS = 2048  # the in-memory tiny model has room for the released canvas


class UsageError(Exception):
    """A mistake in the user's input: reported in one line, exit status 2."""


# -- threads ----------------------------------------------------------------------------------
def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (containers),
    at least 1.  ``os.cpu_count()`` and torch's default count every CPU of the host."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_cpu_quota() -> float | None:
    """The cgroup CPU limit in CPUs (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), or None."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def default_threads() -> int:
    """Intra-op threads per process: ``OMP_NUM_THREADS`` when set (torchrun sets 1 for several
    workers), else the usable CPUs shared among the processes of this node (``LOCAL_WORLD_SIZE``),
    and no more than the CPUs other work leaves idle (the 1-minute load average): on a 2-core VM
    with two busy processes, 1 thread trained the tiny preset at 24.0k tokens/s where 2 threads
    gave 10.0k (spinning threads wait for each other's time slices)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    share = int(local) if local.isdigit() and int(local) > 0 else 1
    cpus = available_cpus()
    try:
        busy = math.floor(os.getloadavg()[0] + 0.5)
    except OSError:  # no load average on this system
        busy = 0
    return max(1, min(cpus // share, cpus - busy))


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per process (default: OMP_NUM_THREADS, else the CPUs this process may "
                             "use, divided among the processes of the node, and no more than other work leaves "
                             "idle by the load average)")


def apply_threads(args: argparse.Namespace) -> int:
    """Set torch's intra-op thread count from ``--threads`` (or :func:`default_threads`)."""
    threads = getattr(args, "threads", None)
    if threads is None:
        threads = default_threads()
    elif threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
    return threads


# -- model and tokenizer ----------------------------------------------------------------------
def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--tokenizer``, ``--device``, ``--dtype`` and ``--threads``, read by :func:`load_model`."""
    parser.add_argument("--model", required=True,
                        help=f"a model directory (Hugging Face layout, with tokenizer.json), or '{TINY}': a tiny "
                             "model with random weights, built in memory (no files needed; its output is noise)")
    parser.add_argument("--tokenizer", help="a tokenizer.json (default: MODEL/tokenizer.json; the embedded "
                                            f"default tokenizer for --model {TINY})")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default=None,
                        help="weights dtype (default: the checkpoint's)")
    add_threads_argument(parser)


def resolve_device(name: str | None) -> torch.device:
    """``--device`` as a torch device this torch build can use (default: cuda when available)."""
    import torch

    name = name or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"bad --device {name!r}: {e}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no visible CUDA device"
            raise UsageError(f"--device {name}: this machine has {build}; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type not in ("cpu", "meta") and not _backend_available(device.type):
        raise UsageError(f"--device {name}: the {device.type!r} backend is not available in this torch build")
    return device


def _backend_available(kind: str) -> bool:
    import torch

    module = getattr(torch, kind, None)
    return bool(module is not None and getattr(module, "is_available", lambda: False)())


def tiny_model(tokenizer, device: torch.device | str):
    """The in-memory tiny model of ``--model tiny``: random weights, seeded, sized for ``tokenizer``."""
    import torch

    from sumi.configs import tiny
    from sumi.model import Sumi

    config = tiny(vocab_size=tokenizer.vocab_size, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                  pad_token_id=tokenizer.pad_id, max_position_embeddings=TINY_POSITIONS)
    return Sumi.initialized(config, device=device, generator=torch.Generator(device=device).manual_seed(TINY_SEED))


def load_tokenizer(path: str | os.PathLike):
    """A :class:`sumi.SumiTokenizer` from ``path``, or a :class:`UsageError` saying what is wrong."""
    from sumi.tokenizer import SumiTokenizer

    try:
        return SumiTokenizer.from_file(path)
    except (OSError, ValueError) as e:
        message = str(e)  # name the file when the message does not (a missing special token, ...)
        raise UsageError(message if str(path) in message else f"tokenizer {path}: {message}") from None


def load_model(args: argparse.Namespace) -> tuple:
    """``(model, tokenizer)`` from ``--model`` / ``--tokenizer`` / ``--device`` / ``--dtype``, and
    the thread count from ``--threads``.  Paths are checked before anything heavy is loaded."""
    import torch

    apply_threads(args)
    device = resolve_device(args.device)
    if args.tokenizer is not None and not Path(args.tokenizer).is_file():
        raise UsageError(f"no tokenizer file {args.tokenizer}")
    if args.model == TINY:
        from sumi.tokenizer import SumiTokenizer

        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else SumiTokenizer.default()
        print(f"sumi: --model {TINY}: a tiny model with random weights (untrained: expect noise)", file=sys.stderr)
        model = tiny_model(tokenizer, device)
        return model.to(getattr(torch, args.dtype)) if args.dtype else model, tokenizer
    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise UsageError(f"no model directory {args.model} (or pass --model {TINY})")
    tokenizer_path = Path(args.tokenizer) if args.tokenizer else model_dir / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise UsageError(f"no tokenizer at {tokenizer_path}; pass --tokenizer PATH")
    tokenizer = load_tokenizer(tokenizer_path)
    from sumi.hf import from_pretrained

    try:
        model = from_pretrained(model_dir, dtype=args.dtype, device=device)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load {args.model}: {e}") from None
    config = model.config
    if (tokenizer.bos_id, tokenizer.eos_id) != (config.bos_token_id, config.eos_token_id):
        print(f"sumi: warning: the tokenizer's BOS/EOS ({tokenizer.bos_id}, {tokenizer.eos_id}) differ from the "
              f"model's ({config.bos_token_id}, {config.eos_token_id}); the canvas uses the model's", file=sys.stderr)
    return model, tokenizer


# -- outputs ----------------------------------------------------------------------------------
def writable_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create ``path`` if needed and prove it writable (a probe file is created and removed),
    before any long computation; a :class:`UsageError` names the cause otherwise."""
    from sumi._fs import check_writable_dir

    try:
        return check_writable_dir(path)
    except OSError as e:  # strerror: the message without the "[Errno N]" prefix
        raise UsageError(f"{flag} {path}: {e.strerror or e}") from None
