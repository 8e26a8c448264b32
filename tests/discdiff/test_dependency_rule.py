"""The dependency rule: discdiff imports torch and jaxtyping only (plus the standard
library), never sumi or torch.distributed, and defines no nn.Module with parameters."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import torch

import discdiff

ROOT = Path(discdiff.__file__).parent
ALLOWED = {"torch", "jaxtyping", "discdiff"}
TESTING_EXTRA = {"hypothesis"}  # discdiff.testing.strategies only (the [test] extra)


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages([str(ROOT)], prefix="discdiff."))


def test_imports_are_allowed():
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in ROOT.rglob("*.py"):
        allowed = ALLOWED | (TESTING_EXTRA if path.parent.name == "testing" else set())
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or top in stdlib, f"{path.relative_to(ROOT.parent)} imports {name}"
                assert not name.startswith("torch.distributed"), f"{path} imports {name}"


def test_importing_discdiff_pulls_in_no_sumi_nor_torch_distributed():
    """In a fresh interpreter: whatever `import torch` loads is the baseline."""
    code = (
        "import json, sys, importlib\n"
        "import torch\n"
        "base = set(sys.modules)\n"
        f"for m in {_modules()!r}: importlib.import_module(m)\n"
        "new = sorted(set(sys.modules) - base)\n"
        "print(json.dumps(new))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    new = json.loads(out.stdout.strip().splitlines()[-1])
    bad = [m for m in new if m.startswith(("sumi", "torch.distributed"))]
    assert not bad, f"discdiff imports pulled in {bad}"
    assert any(m.startswith("discdiff.") for m in new)  # the probe really imported something


def test_no_module_with_parameters():
    for name in _modules():
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == name:
                assert not issubclass(obj, torch.nn.Module), f"{name}.{obj.__name__} is an nn.Module"


def test_public_api_names():
    import discdiff as dd

    for name in ["LinearAlpha", "Cosine", "LinearLogSNR", "GIDDTime"]:
        assert hasattr(dd.schedules, name)
    for name in ["Uniform", "Masked", "Hybrid", "GIDD", "Prior", "Dense"]:
        assert hasattr(dd.kernels, name)
    for name in ["gidd", "mdlm", "masked_ce", "nelbo_estimate", "nelbo", "LossOutput"]:
        assert hasattr(dd.losses, name)
    for name in ["Ancestral", "Adaptive", "Greedy", "TauLeaping", "Confidence", "sample", "Trace",
                 "linear_alpha_grid", "cosine_grid", "schedule_grid"]:
        assert hasattr(dd.samplers, name)
    assert hasattr(dd.likelihood, "nelbo")
    for name in dd.__all__:
        assert hasattr(dd, name)


def test_typing_is_public_and_the_old_module_still_imports():
    """The jaxtyping aliases live in discdiff.typing; discdiff._typing is a thin alias of it."""
    import discdiff._typing as old
    import discdiff.typing as typing

    assert "typing" in discdiff.__all__ and discdiff.typing is typing
    assert old.__all__ == typing.__all__
    for name in typing.__all__:
        assert getattr(old, name) is getattr(typing, name)
    assert {"Tokens", "Logits", "LogSNR", "Probs", "Mask"} <= set(typing.__all__)
