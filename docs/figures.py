"""Draw the figures of the concepts page from the library itself (deterministic: fixed seeds).

    python docs/figures.py                 # writes docs/img/forward-process.png
    python docs/figures.py --out DIR       # somewhere else (the tests do this)

Needs matplotlib (installed with the ``[test]`` and ``[docs]`` extras).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import discdiff as dd  # noqa: E402

SENTENCE = "the cat sat on the mat and looked at the quiet river"
ALPHAS = (1.0, 0.75, 0.5, 0.25, 0.0)


def corrupted_rows(kernel, words: list[str], vocab: list[str], seed: int = 0) -> list[list[str]]:
    """The sentence at each alpha in ALPHAS; one shared uniform draw per position, so a token
    noised at some alpha stays noised at every smaller alpha (the picture of one trajectory)."""
    x = torch.tensor([[vocab.index(w) for w in words]])
    g = torch.Generator().manual_seed(seed)
    keep_u = torch.rand(x.shape, generator=g, dtype=torch.float64)
    noise = kernel.sample_pi(torch.zeros(x.shape, dtype=torch.float64), generator=g)
    rows = []
    for alpha in ALPHAS:
        z = torch.where(keep_u < alpha, x, noise)
        rows.append([vocab[i] for i in z[0].tolist()])
    return rows


def draw(out_dir: Path) -> Path:
    words = SENTENCE.split()
    vocab = sorted(set(words) | {"dog", "ran", "blue", "under", "sky", "of"}) + ["[M]"]
    kernels = {"uniform noise (Sumi)": dd.kernels.Uniform(len(vocab) - 1),
               "masked noise (MDLM, LLaDA)": dd.kernels.Masked(len(vocab), len(vocab) - 1)}
    fig = plt.figure(figsize=(13.5, 6.2))
    grid = fig.add_gridspec(2, 2, width_ratios=(3.2, 1.2), hspace=0.35, wspace=0.15)
    for row, (title, kernel) in enumerate(kernels.items()):
        ax = fig.add_subplot(grid[row, 0])
        ax.set_title(f"forward process, {title}", loc="left", fontsize=11)
        for i, (alpha, tokens) in enumerate(zip(ALPHAS, corrupted_rows(kernel, words, vocab))):
            ax.text(-0.8, -i, f"alpha = {alpha:.2f}", ha="right", va="center", fontsize=9, family="monospace")
            for j, (token, clean) in enumerate(zip(tokens, words)):
                changed = token != clean
                ax.text(1.25 * j, -i, token, ha="center", va="center", fontsize=8.5, family="monospace",
                        color="#b00020" if changed else "#202020",
                        bbox=dict(boxstyle="round,pad=0.25", fc="#fde7ea" if changed else "#eef2f7", ec="none"))
        ax.set_xlim(-3.4, 1.25 * len(words) - 0.6)
        ax.set_ylim(-len(ALPHAS) + 0.4, 0.6)
        ax.axis("off")
    ax = fig.add_subplot(grid[:, 1])
    t = torch.linspace(0.0, 1.0, 401, dtype=torch.float64)
    for name, schedule in {"LinearAlpha": dd.schedules.LinearAlpha(), "Cosine": dd.schedules.Cosine(),
                           "LinearLogSNR": dd.schedules.LinearLogSNR()}.items():
        ax.plot(t, schedule.alpha(t), label=name)
    ax.set_xlabel("time t (0 = data, 1 = prior)")
    ax.set_ylabel("alpha = sigmoid(log-SNR): share of clean tokens")
    ax.set_title("schedules", loc="left", fontsize=11)
    ax.legend(frameon=False, fontsize=9)
    ax.grid(alpha=0.3)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "forward-process.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "img")
    print(draw(parser.parse_args().out))


if __name__ == "__main__":
    main()
