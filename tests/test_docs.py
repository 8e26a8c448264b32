"""The documentation is tested: every tutorial runs, the site builds strictly, and the API
reference renders every public name.

Tutorials (``docs/tutorials/*.md``, and any page listed in ``EXECUTED``): the fenced blocks
marked ``python`` and ``bash`` run top to bottom, as one Python script in a fresh interpreter
(``bash`` blocks through ``subprocess`` with ``check=True``), in an empty temporary directory
where ``benchmarks/`` links to the repository's, offline (no hub or dataset downloads) and with
the session's temporary ``SUMI_CACHE`` (the embedded corpus is prepared once).  Blocks marked
``sh`` (commands for a GPU cluster) and ``text`` (output) are shown, not run.  Python blocks share one namespace, so a page
reads like a notebook.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXECUTED = sorted((DOCS / "tutorials").glob("*.md")) + [DOCS / "concepts.md"]
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def blocks(page: Path) -> list[tuple[str, str]]:
    """The (language, code) of every fenced block of ``page``, in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(page.read_text())]


def script(page: Path) -> str:
    parts = ["import subprocess as _subprocess"]
    for number, (lang, code) in enumerate(blocks(page)):
        where = f"# --- {page.name}, block {number} ({lang})"
        if lang == "python":
            parts += [where, code]
        elif lang == "bash":
            parts += [where, f"_subprocess.run({code!r}, shell=True, check=True, executable='/bin/bash')"]
    return "\n".join(parts) + "\n"


# A page's budget: the slowest (cluster, train-tiny, evaluate) take 1.5 to 2 minutes on an idle
# 2-core machine; a busy one (other jobs, or every test of a parallel run) is several times slower.
PAGE_TIMEOUT_S = 1200


@pytest.mark.timeout(PAGE_TIMEOUT_S + 60)
@pytest.mark.parametrize("page", EXECUTED, ids=lambda p: p.stem)
def test_page_runs(page: Path, tmp_path: Path, sumi_cache: Path):
    code = script(page)
    assert any(lang in ("python", "bash") for lang, _ in blocks(page)), f"{page.name} has no executed block"
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")
    (tmp_path / "tutorial.py").write_text(code)
    env = {**os.environ, "SUMI_CACHE": str(sumi_cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2", "PYTHONHASHSEED": "0",
           "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "tutorial.py"], cwd=tmp_path, capture_output=True, text=True,
                          env=env, timeout=PAGE_TIMEOUT_S)
    assert proc.returncode == 0, f"{page.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"


def test_fences_are_known():
    """Every block is run (python, bash) or explicitly shown only (sh, text): a typo such as
    ``pyhton`` would silently skip a block."""
    for page in sorted(DOCS.rglob("*.md")):
        for lang, _ in blocks(page):
            assert lang in {"python", "bash", "sh", "text", "yaml", "json", "toml"}, (page, lang)


def _inventory(site: Path) -> set[str]:
    """Object names in mkdocstrings' Sphinx inventory (``objects.inv``: 4 text lines, then zlib)."""
    raw = (site / "objects.inv").read_bytes()
    body = raw.split(b"\n", 4)[4]
    return {line.split(" ", 1)[0] for line in zlib.decompress(body).decode().splitlines()}


def _public_modules() -> list[str]:
    """``discdiff``, ``sumi`` and every subpackage or module whose ``__all__`` the API documents."""
    import discdiff
    import sumi

    names = ["discdiff", "sumi"]
    for package in (discdiff, sumi):
        for name in package.__all__:
            value = getattr(package, name)
            if type(value).__name__ == "module":
                names.append(value.__name__)
    return names + ["sumi.model", "sumi.data", "sumi.data.readers", "sumi.train", "sumi.distributed", "sumi.evaluate", "sumi.tokenizer",
                    "sumi.family", "sumi.decoding", "sumi.study"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs", reason="the [test] extra installs mkdocs")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_site_builds_strictly(site: Path):
    pages = ["index.html", "concepts/index.html", "api/discdiff/index.html", "api/sumi/index.html"]
    pages += [f"tutorials/{p.stem}/index.html" for p in (DOCS / "tutorials").glob("*.md")]
    for page in pages:
        assert (site / page).is_file(), page


def test_api_reference_covers_every_public_name(site: Path):
    import importlib

    documented = _inventory(site)
    missing = []
    for module_name in _public_modules():
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            value = getattr(module, name)
            if type(value).__name__ == "module":
                continue  # documented as a module of its own
            # rendered under the module that re-exports it, or under its defining module
            candidates = {f"{module_name}.{name}", f"{getattr(value, '__module__', '')}.{name}"}
            if not candidates & documented:
                missing.append(f"{module_name}.{name}")
    assert not missing, f"not in the API reference: {missing}"


def test_concepts_figure_is_drawn_by_the_library(tmp_path: Path):
    """``docs/figures.py`` regenerates the concepts page's figure (the committed PNG is its output)."""
    proc = subprocess.run([sys.executable, str(DOCS / "figures.py"), "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    png = (tmp_path / "forward-process.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    assert (DOCS / "img" / "forward-process.png").is_file()
    assert "img/forward-process.png" in (DOCS / "concepts.md").read_text()


def test_text_has_no_control_characters():
    """A lost backslash turns ``\\frac`` into a form feed and ``\\beta`` into a backspace (it
    happened in docs/math.md): no page, docstring or script may hold control characters."""
    bad = []
    for pattern in ("docs/**/*.md", "discdiff/**/*.py", "sumi/**/*.py", "benchmarks/**/*.py", "*.md"):
        for path in ROOT.glob(pattern):
            text = path.read_text(encoding="utf-8")
            if re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", text):
                bad.append(str(path.relative_to(ROOT)))
    assert not bad, f"control characters in {bad}"
