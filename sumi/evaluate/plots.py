"""PNG plots of the generation probes (:mod:`sumi.evaluate.probes`).

Figures are built as plain :class:`matplotlib.figure.Figure` objects drawn by the Agg canvas:
no pyplot, so no backend switch, no figure registry and no global state outlives a call (each
figure is garbage once saved).  Every function writes one PNG and returns its path.
"""

from __future__ import annotations

import os
from pathlib import Path

from sumi._plot import figure, integer_ticks, save
from sumi.evaluate.probes import CommitmentReport, RevisionReport

_MAX_LEGEND = 10  # more prompts than this: lines without a legend (it would hide the data)


def plot_ink(report: CommitmentReport, path: str | os.PathLike, prompt: int = 0) -> Path:
    """Heatmap of how the ink spreads for one prompt: x the answer position, y the step (0, the
    noise canvas, at the top), dark where the position already holds its final token; a dot marks
    each position's commitment step."""
    if not 0 <= prompt < len(report.prompts):
        raise ValueError(f"prompt must be in [0, {len(report.prompts)}), got {prompt}")
    ink = report.ink[prompt].int().numpy()  # [steps + 1, M]
    steps, width = ink.shape[0] - 1, ink.shape[1]
    fig = figure(max(5.0, min(12.0, 0.12 * width + 2)), max(3.0, min(9.0, 0.08 * steps + 2)))
    ax = fig.add_subplot()
    ax.imshow(ink, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.scatter(range(width), report.commitment_steps[prompt].tolist(), s=8, c="tab:red")
    ax.set_xlabel("answer position")
    ax.set_ylabel("step")
    rho = float(report.order_correlation[prompt])
    ltr = float(report.left_to_right_fraction[prompt])
    ax.set_title(f"ink of prompt {prompt} (dark: final token in place; red: commitment step)\n"
                 f"Spearman {rho:.2f}, left-to-right pairs {ltr:.2f}", fontsize="medium")
    ax.xaxis.set_major_locator(integer_ticks())
    return save(fig, path)


def plot_commitment(report: CommitmentReport, path: str | os.PathLike) -> Path:
    """Commitment step by answer position, one line per prompt, plus the mean over prompts: a
    rising line is left-to-right generation."""
    commit = report.commitment_steps.double()  # [batch, M]
    positions = list(range(commit.shape[1]))
    fig = figure(7.0, 4.0)
    ax = fig.add_subplot()
    labelled = commit.shape[0] <= _MAX_LEGEND
    for i, row in enumerate(commit.tolist()):
        ax.plot(positions, row, marker="o", ms=2.5, lw=0.8, alpha=0.6,
                label=f"prompt {i} (rho {float(report.order_correlation[i]):.2f})" if labelled else None)
    ax.plot(positions, commit.mean(0).tolist(), color="black", lw=2, label="mean")
    ax.set_xlabel("answer position")
    ax.set_ylabel("commitment step")
    ax.set_ylim(-0.5, report.settings["steps"] + 0.5)
    ax.xaxis.set_major_locator(integer_ticks())
    ax.set_title("when each answer position commits to its final token")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return save(fig, path)


def plot_revision(report: RevisionReport, path: str | os.PathLike) -> Path:
    """One panel per statistic against the revision budget: overwrite rate per step, net change
    from the first pass, round trips per answer position, and accuracy when a checker ran."""
    budgets = [s.budget for s in report.budgets]
    panels = [("overwrite rate per step", [s.overwrite_rate for s in report.budgets]),
              ("net change vs first pass", [s.net_change for s in report.budgets]),
              ("A->B->A round trips per position", [s.round_trips for s in report.budgets])]
    if all(s.accuracy is not None for s in report.budgets):
        panels.append(("accuracy", [s.accuracy for s in report.budgets]))
    fig = figure(3.2 * len(panels), 3.2)
    for k, (title, values) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        ax.plot(budgets, values, marker="o")
        ax.set_xlabel("revision budget (steps)")
        ax.xaxis.set_major_locator(integer_ticks())
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3)
    return save(fig, path)
