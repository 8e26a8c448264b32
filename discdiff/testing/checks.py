"""Invariant checks for any kernel or schedule (docs/math.md, "Invariants").

``check_kernel(kernel)`` and ``check_schedule(schedule)`` raise ``AssertionError`` naming the
invariant that failed; they return ``None`` when all hold.  They need only torch and run in
float64 against the dense matrix oracle :class:`discdiff.kernels.Dense`, so they suit small
vocabularies (a few dozen states).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from discdiff.kernels.base import Kernel
from discdiff.kernels.dense import Dense
from discdiff.losses.elbo import gidd
from discdiff.schedules.base import Schedule

DEFAULT_LOG_SNRS = (-9.0, -4.0, -1.0, 0.0, 0.5, 2.0, 6.0, 9.0)
F64 = torch.float64


def _close(name: str, actual: Tensor, expected: Tensor, atol: float, rtol: float = 0.0) -> None:
    try:
        torch.testing.assert_close(actual.to(F64), expected.to(F64), atol=atol, rtol=rtol)
    except AssertionError as err:
        raise AssertionError(f"invariant '{name}' failed: {err}") from None


def _require(name: str, ok: bool, detail: str = "") -> None:
    if not ok:
        raise AssertionError(f"invariant '{name}' failed{': ' + detail if detail else ''}")


def _clean_ids(kernel: Kernel) -> Tensor:
    ids = torch.arange(kernel.vocab_size)
    return ids if kernel.mask_id is None else ids[ids != kernel.mask_id]


def _slices(V: int, mask_id: int | None) -> list[tuple[int, int]]:
    """Vocabulary slices: all of it, each end, the middle, and around the mask state."""
    cuts = {(0, V), (0, 1), (V - 1, V), (V // 3, max(V // 3 + 1, 2 * V // 3))}
    if mask_id is not None:
        cuts |= {(mask_id, mask_id + 1), (max(0, mask_id - 1), min(V, mask_id + 2))}
    return sorted(cuts)


def _random_x0(kernel: Kernel, gen: torch.Generator) -> Tensor:
    logits = torch.randn(kernel.vocab_size, generator=gen, dtype=F64)
    return kernel.x0_log_probs(logits).exp()


def _tightness(kernel: Kernel, x0: Tensor, x: int, lo: float, hi: float, step: float) -> Tensor:
    """``integral_{lo}^{hi} E_{z ~ q(.|x)}[w (KL + IS)] d lambda`` by the trapezoid rule, exact in ``z``."""
    lams = torch.arange(lo, hi + step / 2, step, dtype=F64)
    n, V = lams.numel(), kernel.vocab_size
    xs = torch.full((n, V), x)
    zs = torch.arange(V).expand(n, V)
    lam = lams.unsqueeze(-1).expand(n, V)
    q = kernel.marginal(xs[:, 0], lams)                                     # [n, V]
    logits = torch.log(x0).expand(n, V, V)
    out = gidd(kernel, logits, xs, zs, lam, validate=False)
    f = torch.where(q > 0, q * out.integrand, torch.zeros_like(q)).sum(-1)  # [n]
    return (f.sum() - 0.5 * (f[0] + f[-1])) * step


def check_kernel(
    kernel: Kernel,
    *,
    log_snrs: Sequence[float] = DEFAULT_LOG_SNRS,
    seed: int = 0,
    atol: float = 1e-9,
    samples: int = 20_000,
    tightness: bool = True,
) -> None:
    """Check every invariant of docs/math.md on ``kernel`` in float64.

    1. marginals non-negative, summing to 1; 2. endpoints ``lambda = +inf`` -> ``e_x`` and
    ``-inf`` -> the prior; 3. Chapman-Kolmogorov through :meth:`~Kernel.transition`, which must
    also match the oracle's ``Q_s^{-1} Q_t`` and be a Markov kernel; 4. posterior: normalized,
    delta at ``s = t``, the true ``q(z_s | z_t, x)`` for ``x_hat = e_x``, the oracle's Bayes rule
    for any ``x_hat``, and exact transport of marginals under a constant predictor;
    5. ``pi`` sums to 1, ``pi'`` sums to 0 and matches finite differences, ``pi_at``/``dpi_at``
    match the dense forms, ``pi_slice`` matches ``pi`` on slices of the vocabulary; 6. KL = IS = 0
    for a perfect prediction; loss terms and weights match the oracle; 7. ELBO tightness:
    ``integral E_z[w (KL + IS)] d lambda = -log p0(x)`` for a constant predictor
    (``tightness=True``); 8. ``corrupt`` frequencies match the marginal within 5 standard errors
    (``samples`` draws per log-SNR).
    """
    V = kernel.vocab_size
    if V > 256:
        raise ValueError(f"check_kernel builds [V, V] matrices; use a small vocabulary (got V = {V})")
    gen = torch.Generator().manual_seed(seed)
    oracle = Dense.of(kernel)
    clean = _clean_ids(kernel)
    lams = torch.tensor(list(log_snrs), dtype=F64)
    _require("log_snrs", bool(torch.isfinite(lams).all()) and lams.numel() >= 2, "need >= 2 finite values")

    # 1-2. marginals and endpoints
    q = kernel.marginal(clean.unsqueeze(-1).expand(-1, lams.numel()), lams.expand(clean.numel(), -1))
    _require("marginal >= 0", bool((q >= 0).all()))
    _close("marginal sums to 1", q.sum(-1), torch.ones(q.shape[:-1], dtype=F64), atol)
    onehot = torch.nn.functional.one_hot(clean, V).to(F64)
    _close("endpoint lambda=+inf is e_x", kernel.marginal(clean, torch.tensor(math.inf, dtype=F64).expand(clean.shape)), onehot, atol)
    prior = kernel.pi(torch.tensor(-math.inf, dtype=F64))
    _close("endpoint lambda=-inf is the prior", kernel.marginal(clean, torch.tensor(-math.inf, dtype=F64).expand(clean.shape)), prior.expand(clean.numel(), V), atol)

    for lam in lams:
        # 5. the mixing distribution and its derivative
        pi, dpi = kernel.pi(lam), kernel.dpi(lam)
        _require("pi >= 0", bool((pi >= 0).all()))
        _close("pi sums to 1", pi.sum(), torch.ones((), dtype=F64), atol)
        _close("dpi sums to 0", dpi.sum(), torch.zeros((), dtype=F64), atol)
        _close("dpi matches finite differences", dpi, oracle.dpi(lam), 1e-7, 1e-6)
        ids = torch.arange(V)
        _close("pi_at matches pi", kernel.pi_at(lam.expand(V), ids), pi, atol)
        _close("dpi_at matches dpi", kernel.dpi_at(lam.expand(V), ids), dpi, atol)
        _close("marginal matches the oracle", kernel.marginal(clean, lam.expand(clean.shape)), oracle.matrix(lam)[clean], atol)

    # 5b. pi on slices of the vocabulary (what chunked losses read), one lambda per row
    pis = torch.stack([kernel.pi(lam) for lam in lams])
    for start, stop in _slices(V, kernel.mask_id):
        got = kernel.pi_slice(lams, start, stop)
        _require("pi_slice broadcasts to [*lam.shape, stop - start]",
                 torch.broadcast_shapes(got.shape, (lams.numel(), stop - start)) == (lams.numel(), stop - start),
                 f"slice [{start}, {stop}) gave shape {tuple(got.shape)}")
        _close(f"pi_slice [{start}, {stop}) matches pi", torch.broadcast_to(got, (lams.numel(), stop - start)),
               pis[:, start:stop], atol)

    x0 = _random_x0(kernel, gen)
    eye = torch.eye(V, dtype=F64)
    z_all = torch.arange(V)
    n_lam = lams.numel()
    pairs = sorted({(i, j) for i in range(n_lam) for j in (i, min(i + 1, n_lam - 1), n_lam - 1)})
    for i, j in pairs:
        lam_t, lam_s = lams[i], lams[j]
        lt, ls = lam_t.expand(V), lam_s.expand(V)
        # 3. transition and Chapman-Kolmogorov
        alpha_ts, noise_ts = kernel.transition(lam_t, lam_s)
        t_matrix = alpha_ts * eye + noise_ts.expand(V, V)
        _require("transition is a Markov kernel", bool((t_matrix >= -atol).all()),
                 f"negative entries for lam_t={lam_t.item()}, lam_s={lam_s.item()}")
        _close("transition matches the oracle Q_s^-1 Q_t", t_matrix, oracle.transition_matrix(lam_t, lam_s), 1e-8)
        q_s = kernel.marginal(clean, lam_s.expand(clean.shape))
        q_t = kernel.marginal(clean, lam_t.expand(clean.shape))
        _close("Chapman-Kolmogorov", q_s @ t_matrix, q_t, atol)

        # 4. posteriors, every z_t at once
        m_t = kernel.marginal_of_probs(x0[None], lam_t[None])[0]
        reach = m_t > 0
        post = kernel.posterior(x0.expand(V, V), z_all, lt, ls)
        post = torch.where(reach.unsqueeze(-1), post, torch.zeros_like(post))
        _require("posterior >= 0", bool((post >= -atol).all()))
        _close("posterior sums to 1", post[reach].sum(-1), torch.ones(int(reach.sum()), dtype=F64), atol)
        _close("posterior matches the oracle's Bayes rule", post, oracle.posterior(x0, lam_t, lam_s), 1e-8)
        if i == j:
            _close("posterior at s = t is a delta at z_t", post[reach], eye[reach], atol)
        _close("constant predictor transports marginals", m_t @ post, kernel.marginal_of_probs(x0[None], lam_s[None])[0], 1e-8)
        x = int(clean[(i + j) % clean.numel()])
        reach_x = oracle.matrix(lam_t)[x] > 0
        got = kernel.posterior(eye[x].expand(V, V), z_all, lt, ls)
        got = torch.where(reach_x.unsqueeze(-1), got, torch.zeros_like(got))
        _close("posterior with x_hat = e_x is q(z_s | z_t, x)", got, oracle.true_posterior(x, lam_t, lam_s), 1e-8)

    # 6. losses: agreement with the oracle and perfect prediction, all (x, z) at once per lambda
    xs = clean.repeat_interleave(V)
    zs = z_all.repeat(clean.numel())
    n = xs.numel()
    logits = torch.log(x0).expand(n, V)
    perfect = torch.full((n, V), -math.inf, dtype=F64).scatter(-1, xs.unsqueeze(-1), 0.0)
    for lam in lams:
        terms = [oracle.loss_terms(x, x0, lam) for x in clean.tolist()]
        q = torch.stack([tm.q for tm in terms]).flatten()
        support = q > 0
        lam_n = lam.expand(n)
        out = gidd(kernel, logits[support], xs[support], zs[support], lam_n[support])
        _close("KL matches the oracle", out.kl, torch.stack([tm.kl for tm in terms]).flatten()[support], 1e-8, 1e-8)
        _close("IS matches the oracle", out.is_div, torch.stack([tm.is_div for tm in terms]).flatten()[support], 1e-8, 1e-8)
        _close("weight matches the oracle", out.weight, torch.stack([tm.weight for tm in terms]).flatten()[support], 1e-7, 1e-7)
        out = gidd(kernel, perfect[support], xs[support], zs[support], lam_n[support])
        zeros = torch.zeros(int(support.sum()), dtype=F64)
        _close("perfect prediction has KL = 0", out.kl, zeros, atol)
        _close("perfect prediction has IS = 0", out.is_div, zeros, atol)

    # 7. ELBO tightness for a constant predictor
    if tightness:
        x = int(clean[0])
        value = _tightness(kernel, x0, x, -60.0, 60.0, 0.02)
        _close("ELBO tightness for a constant predictor", value, -torch.log(x0[x]), 1e-8, 1e-8)

    # 8. corrupt draws follow the marginal
    for lam in lams[:: max(1, lams.numel() // 3)]:
        x = int(clean[-1])
        z = kernel.corrupt(torch.full((samples,), x), lam.expand(samples), generator=gen)
        freq = torch.bincount(z, minlength=V).to(F64) / samples
        p = kernel.marginal(torch.tensor([x]), lam[None])[0]
        bound = 5 * torch.sqrt(p * (1 - p) / samples) + 1e-12
        _require("corrupt matches the marginal", bool(((freq - p).abs() <= bound).all()),
                 f"lambda={lam.item()}: frequencies {freq.tolist()} vs marginal {p.tolist()}")


def check_schedule(schedule: Schedule, *, points: int = 64, atol: float = 1e-8) -> None:
    """Check a schedule in float64: ``lambda(t)`` non-increasing and within its clamp range;
    ``alpha = sigmoid(lambda)``; ``d lambda/dt`` matches finite differences inside the clamp
    and is 0 outside; ``t(lambda(t)) = t`` where ``lambda`` is not clamped and
    ``lambda(t(l)) = l`` on the clamp range; the clamp ends are reached at ``t = 0`` and ``1``
    when finite."""
    t = torch.linspace(0.0, 1.0, points + 2, dtype=F64)[1:-1]
    lam = schedule.log_snr(t)
    _require("log_snr is non-increasing", bool((lam[1:] <= lam[:-1] + atol).all()))
    _require("log_snr within its clamp", bool(((lam >= schedule.log_snr_min) & (lam <= schedule.log_snr_max)).all()))
    _close("alpha = sigmoid(log_snr)", schedule.alpha(t), torch.sigmoid(lam), atol)

    h = 1e-5
    t_in = t[(t > 2 * h) & (t < 1 - 2 * h)]
    f = lambda k: schedule.log_snr(t_in + k * h)  # noqa: E731
    fd = (f(-2) - 8 * f(-1) + 8 * f(1) - f(2)) / (12 * h)
    lam_in = schedule.log_snr(t_in)
    margin = 1e-3 * (schedule.log_snr_max - schedule.log_snr_min) if math.isfinite(schedule.log_snr_max - schedule.log_snr_min) else 1e-3
    interior = (lam_in > schedule.log_snr_min + margin) & (lam_in < schedule.log_snr_max - margin)
    d = schedule.dlog_snr_dt(t_in)
    _close("dlog_snr_dt matches finite differences", d[interior], fd[interior], 1e-5, 1e-6)
    _require("dlog_snr_dt <= 0", bool((d <= 0).all()))
    clamped = (lam_in <= schedule.log_snr_min) | (lam_in >= schedule.log_snr_max)
    _require("dlog_snr_dt is 0 where clamped", bool((d[clamped] == 0).all()))

    free = (lam > schedule.log_snr_min) & (lam < schedule.log_snr_max)
    _close("t_of_log_snr inverts log_snr", schedule.t_of_log_snr(lam[free]), t[free], 1e-9, 1e-9)
    # |lambda| <= 20: beyond, 1 - t or t is below float64's resolution near 1
    lo = max(schedule.log_snr_min, -20.0)
    hi = min(schedule.log_snr_max, 20.0)
    grid = torch.linspace(lo, hi, points, dtype=F64)
    _close("log_snr inverts t_of_log_snr", schedule.log_snr(schedule.t_of_log_snr(grid)), grid, 1e-6, 1e-9)
    ends = schedule.log_snr(torch.tensor([0.0, 1.0], dtype=F64))
    if math.isfinite(schedule.log_snr_max):
        _close("log_snr(0) = log_snr_max", ends[0], torch.tensor(schedule.log_snr_max, dtype=F64), atol)
    if math.isfinite(schedule.log_snr_min):
        _close("log_snr(1) = log_snr_min", ends[1], torch.tensor(schedule.log_snr_min, dtype=F64), atol)
