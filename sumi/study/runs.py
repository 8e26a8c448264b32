"""The trainings of a study: each an ordinary ``sumi train`` run, cached by its command line.

A :class:`Run` is the arguments of one ``sumi train`` command (preset, family, steps, seed,
data, ``--set`` overrides).  A :class:`RunCache` keeps every run in its own directory named by
a hash of those arguments: a run already finished (its exported ``model/``) is reused, one
interrupted at any point is continued with ``--resume`` from its newest checkpoint, and a larger
study that asks for a run a smaller one made reuses it.  A study's training is exactly what a
user would run by hand: by default the ``sumi train`` command's own code, in this process (no
interpreter start-up per run); with a ``launcher``, that command as a separate process (``python
-m sumi``, or ``torchrun --nproc-per-node 8 -m sumi`` for many ranks).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sumi._checks import check_int

__all__ = ["Run", "RunCache", "RunFailed", "model_done"]

# checkpoints per run (at least): a study killed mid-run loses at most a quarter of that run
_CHECKPOINTS_PER_RUN = 4


class RunFailed(RuntimeError):
    """A training of the study exited with an error (its output says why)."""


@dataclass(frozen=True)
class Run:
    """One ``sumi train`` command: ``sumi train --preset PRESET --objective OBJECTIVE --steps
    STEPS --seed SEED [--data D ...] [--set K=V ...]``.

    ``label`` names the run for people (progress lines, tables); it is not part of the cache key.
    """

    objective: str
    steps: int
    preset: str = "tiny"
    seed: int = 0
    data: tuple[str, ...] = ()
    assignments: tuple[str, ...] = ()
    label: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        check_int("steps", self.steps, 1)
        check_int("seed", self.seed, 0)
        object.__setattr__(self, "data", tuple(self.data))
        object.__setattr__(self, "assignments", tuple(self.assignments))

    @property
    def checkpoint_every(self) -> int:
        return max(1, math.ceil(self.steps / _CHECKPOINTS_PER_RUN))

    def args(self) -> list[str]:
        """The ``sumi train`` arguments (without ``--out``, ``--resume`` and ``--no-progress``)."""
        args = ["train", "--preset", self.preset, "--objective", self.objective, "--steps", str(self.steps),
                "--seed", str(self.seed), "--checkpoint-every", str(self.checkpoint_every)]
        for d in self.data:
            args += ["--data", d]
        for a in self.assignments:
            args += ["--set", a]
        return args

    def key(self) -> str:
        """A hash of the command line: equal runs share a directory."""
        spec = {k: v for k, v in asdict(self).items() if k != "label"}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> str:
        return self.label or " ".join(self.args()[1:])


def model_done(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a finished run: its exported ``model/`` (written last, after the
    final checkpoint), with its configuration and weights."""
    model = Path(run_dir) / "model"
    return (model / "config.json").is_file() and any(model.glob("*.safetensors"))


class RunCache:
    """Runs kept under ``root``, one directory each (``OBJECTIVE-KEY``).

    Args:
        root: the cache directory (created when needed).
        launcher: the command that runs ``sumi`` for each training as its own process, e.g.
            ``[sys.executable, "-m", "sumi"]`` or ``["torchrun", "--nproc-per-node", "8", "-m",
            "sumi"]``; ``None`` (default): the ``sumi train`` command in this process (its torch
            thread count is restored afterwards).
        threads: passed as ``--threads`` (default: ``sumi train``'s choice).
        progress: show each run's progress bar (on stderr) and a line when it starts.
    """

    def __init__(self, root: str | os.PathLike, *, launcher: Sequence[str] | None = None, threads: int | None = None,
                 progress: bool = True) -> None:
        self.root = Path(root)
        self.launcher = list(launcher) if launcher else None
        self.threads = threads
        self.progress = progress

    def path(self, run: Run) -> Path:
        return self.root / f"{run.objective}-{run.key()}"

    def done(self, run: Run) -> bool:
        return model_done(self.path(run))

    def ensure(self, run: Run, *, position: str = "") -> Path:
        """The model directory of ``run``, trained first unless the cache holds it finished;
        an interrupted run continues from its newest checkpoint.

        Raises:
            RunFailed: the training exited with an error (an exit status 130 re-raises
                :class:`KeyboardInterrupt`: the run was interrupted and resumes next time).
        """
        out = self.path(run)
        if model_done(out):
            return out / "model"
        out.mkdir(parents=True, exist_ok=True)
        spec = out / "run.json"  # what the directory holds, for a person browsing the cache
        if not spec.is_file():
            from sumi._fs import atomic_write

            atomic_write(spec, json.dumps({"args": run.args(), "label": run.label}, indent=2) + "\n")
        resume = (out / "checkpoints").is_dir() and _has_checkpoint(out / "checkpoints")
        args = run.args() + ["--out", str(out)] + (["--resume"] if resume else [])
        if self.threads is not None:
            args += ["--threads", str(self.threads)]
        if not self.progress:
            args.append("--no-progress")
        else:
            verb = "resuming" if resume else "training"
            print(f"sumi study: {verb} {position}{run.describe()} -> {out}", file=sys.stderr, flush=True)
        if self.launcher is None:
            status, tail = _train_here(args)
            what = f"`sumi {' '.join(args)}`"
        else:
            proc = subprocess.run(self.launcher + args, stdout=subprocess.DEVNULL,
                                  stderr=None if self.progress else subprocess.PIPE, text=True)
            status, tail = proc.returncode, (proc.stderr or "")[-2000:]
            what = f"`{' '.join(self.launcher + args)}`"
        if status == 130:
            raise KeyboardInterrupt
        if status != 0 or not model_done(out):
            raise RunFailed(f"{what} exited with status {status}"
                            + (f": {tail.strip()}" if tail.strip() else " (its output is above)"))
        return out / "model"


def _train_here(args: list[str]) -> tuple[int, str]:
    """Run ``sumi train ARGS`` in this process: the command's own parser and code (so a study's
    training is the command a user types); its exit status and, for a mistake in the input, the
    one-line message.  The torch thread count it sets is restored."""
    import torch

    from sumi.cli_common import UsageError
    from sumi.train import command

    parser = argparse.ArgumentParser(prog="sumi train")
    command.add_arguments(parser)
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its summary line; the study reports its own
            return command.run(parser.parse_args(args[1:])), ""
    except UsageError as e:
        return 2, str(e)
    finally:
        torch.set_num_threads(threads)


def _has_checkpoint(directory: Path) -> bool:
    from sumi.distributed import checkpoint as ckpt

    return ckpt.latest(directory) is not None
