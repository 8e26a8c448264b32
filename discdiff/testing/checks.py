"""Invariant checks for any kernel or schedule (docs/math.md, "Invariants" and "Checking your
own kernel or schedule").

``check_kernel(kernel)`` and ``check_schedule(schedule)`` raise ``AssertionError`` naming the
invariant that failed (also when the checked object itself raises); they return ``None`` when
all hold.  They need only torch and run in float64 against the dense matrix oracle
:class:`discdiff.kernels.Dense`, so they suit small vocabularies (a few dozen states).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

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


@contextmanager
def _invariant(name: str) -> Iterator[None]:
    """Report an exception raised by the checked object as the failure of invariant ``name``."""
    try:
        yield
    except AssertionError:
        raise
    except Exception as err:  # noqa: BLE001 - any error of user code is a failed invariant
        raise AssertionError(f"invariant '{name}' failed: raised {type(err).__name__}: {err}") from err


def _check_definition(kernel: Kernel) -> None:
    """What a family defines has the documented dtype and shape: checked first, so that a
    float32 ``pi`` is reported as such, not as a marginal that misses 1 by 1e-8."""
    V = kernel.vocab_size
    lam = torch.tensor([[-math.inf, -1.0, 0.0, 2.0, math.inf]], dtype=F64)  # [1, 5]: any leading shape
    for name in ("pi", "dpi"):
        with _invariant(f"{name} is defined at every log-SNR, +-inf included"):
            value = getattr(kernel, name)(lam)
        _require(f"{name} returns lambda's dtype", isinstance(value, Tensor) and value.dtype == F64,
                 f"{name} returned {getattr(value, 'dtype', type(value).__name__)} for float64 lambda")
        _require(f"{name} has shape [*lam.shape, V]", tuple(value.shape) == (*lam.shape, V),
                 f"{name} of lambda with shape {tuple(lam.shape)} has shape {tuple(value.shape)}")
    with _invariant("sample_pi draws at every log-SNR"):
        draw = kernel.sample_pi(lam.expand(3, -1), torch.Generator().manual_seed(0))
    _require("sample_pi returns int64 ids of lambda's shape",
             draw.dtype == torch.int64 and draw.shape == (3, lam.shape[1]),
             f"got {draw.dtype} of shape {tuple(draw.shape)}")


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
    """Check every invariant of docs/math.md ("Invariants") on ``kernel`` in float64.

    0. ``pi`` and ``dpi`` return float64 ``[*lam.shape, V]`` for float64 ``lambda`` (``+-inf``
    included) and ``sample_pi`` int64 ids; 1. marginals non-negative, summing to 1; 2. endpoints
    ``lambda = +inf`` -> ``e_x`` and ``-inf`` -> the prior; 3. Chapman-Kolmogorov through
    :meth:`~Kernel.transition`, which must also match the oracle's ``Q_s^{-1} Q_t`` and be a Markov
    kernel; 4. posterior: normalized, delta at ``s = t``, the true ``q(z_s | z_t, x)`` for ``x_hat =
    e_x``, the oracle's Bayes rule for any ``x_hat``, and exact transport of marginals under a
    constant predictor; 5. ``pi`` sums to 1, ``pi'`` sums to 0 and matches finite differences,
    ``pi_at``/``dpi_at`` match the dense forms, ``pi_slice`` matches ``pi`` on slices of the
    vocabulary; 6. KL = IS = 0 for a perfect prediction; loss terms and weights match the oracle; 7.
    ELBO tightness: ``integral E_z[w (KL + IS)] d lambda = -log p0(x)`` for a constant predictor
    (``tightness=True``); 8. ``corrupt`` frequencies match the marginal within 5 standard errors
    (``samples`` draws per log-SNR).
    """
    V = kernel.vocab_size
    if V > 256:
        raise ValueError(f"check_kernel builds [V, V] matrices; use a small vocabulary (got V = {V})")
    _check_definition(kernel)
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


def _end_probes(dtype: torch.dtype) -> Tensor:
    """``t = 0``, its upper neighbour, the lower neighbour of 1, and 1, in ``dtype``."""
    zero, one = torch.zeros((), dtype=dtype), torch.ones((), dtype=dtype)
    return torch.stack([zero, torch.nextafter(zero, one), torch.nextafter(one, zero), one])


def _check_schedule_ends(schedule: Schedule, atol: float) -> None:
    """The ends of time in float32 and float64, where draws do land (``t = 1.0`` comes up about
    once per 3e7 float32 uniform draws): no NaN, monotone, the clamp ends reached exactly, the
    derivative finite, and float32 agreeing with float64."""
    ends = (schedule.log_snr_max, schedule.log_snr_min)
    scale = max([1.0] + [abs(e) for e in ends if math.isfinite(e)])  # magnitude of the values computed
    for dtype in (F64, torch.float32):
        t = _end_probes(dtype)
        name = str(dtype).removeprefix("torch.")
        where = f"at t = 0, 1 and their neighbours in {name}"
        with _invariant(f"log_snr, alpha and dlog_snr_dt are defined {where}"):
            lam, alpha, slope = schedule.log_snr(t), schedule.alpha(t), schedule.dlog_snr_dt(t)
        _require(f"log_snr keeps the dtype of t ({dtype})", lam.dtype == dtype, f"got {lam.dtype}")
        _require(f"log_snr is not NaN {where}", not bool(torch.isnan(lam).any()),
                 f"t = {t.tolist()}: {lam.tolist()}")
        _require(f"alpha is in [0, 1] {where}", bool(((alpha >= 0) & (alpha <= 1)).all()),
                 f"t = {t.tolist()}: {alpha.tolist()}")
        _require(f"dlog_snr_dt is <= 0 and not NaN {where}", bool((slope <= 0).all()),
                 f"t = {t.tolist()}: {slope.tolist()}")
        _require(f"log_snr is non-increasing {where}", bool((lam[1:] <= lam[:-1]).all()), f"{lam.tolist()}")
        for i, end, what in ((0, ends[0], "log_snr(0) = log_snr_max"), (-1, ends[1], "log_snr(1) = log_snr_min")):
            got = float(lam[i])
            tol = max(atol, 4 * torch.finfo(dtype).eps * scale)  # a few roundings in t's dtype
            _require(f"{what} (the schedule reaches its clamp ends; {name})", got == end or abs(got - end) <= tol,
                     f"got {got} for {end}: a schedule spans its whole clamp range [log_snr_min, log_snr_max]; "
                     f"set them to the range it attains")
        if dtype != torch.float32:
            continue
        # float32 against float64 at the same (float32) times
        ref = schedule.log_snr(t.to(F64))
        finite = torch.isfinite(ref)
        same_inf = bool((lam.to(F64)[~finite] == ref[~finite]).all())
        err = ((lam.to(F64) - ref).abs() / ref.abs().clamp_min(1.0))[finite]
        _require("float32 log_snr agrees with float64 near t = 0 and t = 1",
                 same_inf and bool((err <= 1e-4).all()),
                 f"t = {t.tolist()}: float32 {lam.tolist()} vs float64 {ref.tolist()}")


def check_schedule(schedule: Schedule, *, points: int = 64, atol: float = 1e-8) -> None:
    """Check a schedule: at ``t = 0``, ``t = 1`` and their float neighbours, in float32 and
    float64, ``lambda`` is not NaN, non-increasing, reaches the clamp ends exactly
    (``lambda(0) = log_snr_max``, ``lambda(1) = log_snr_min``, infinite ends included),
    ``alpha`` lies in ``[0, 1]``, ``d lambda/dt <= 0``, and float32 agrees with float64; then in
    float64 on a grid: ``lambda(t)`` non-increasing and within its clamp range;
    ``alpha = sigmoid(lambda)``; ``d lambda/dt`` matches finite differences inside the clamp and
    is 0 outside; ``t(lambda(t)) = t`` where ``lambda`` is not clamped and ``lambda(t(l)) = l``
    on the range the schedule attains (``|l| <= 20``); ``t_range`` lies in ``[0, 1]``.

    An exception raised by the schedule (for example an inverse that refuses values outside its
    natural range) is reported as the ``AssertionError`` of the invariant being checked.
    """
    _check_schedule_ends(schedule, atol)
    t = torch.linspace(0.0, 1.0, points + 2, dtype=F64)[1:-1]
    with _invariant("log_snr and alpha are defined on (0, 1)"):
        lam = schedule.log_snr(t)
        alpha = schedule.alpha(t)
    _require("log_snr is non-increasing", bool((lam[1:] <= lam[:-1] + atol).all()))
    _require("log_snr within its clamp", bool(((lam >= schedule.log_snr_min) & (lam <= schedule.log_snr_max)).all()))
    _close("alpha = sigmoid(log_snr)", alpha, torch.sigmoid(lam), atol)

    h = 1e-5
    t_in = t[(t > 2 * h) & (t < 1 - 2 * h)]
    with _invariant("dlog_snr_dt is defined on (0, 1)"):
        f = lambda k: schedule.log_snr(t_in + k * h)  # noqa: E731
        fd = (f(-2) - 8 * f(-1) + 8 * f(1) - f(2)) / (12 * h)
        lam_in = schedule.log_snr(t_in)
        d = schedule.dlog_snr_dt(t_in)
    margin = 1e-3 * (schedule.log_snr_max - schedule.log_snr_min) if math.isfinite(schedule.log_snr_max - schedule.log_snr_min) else 1e-3
    interior = (lam_in > schedule.log_snr_min + margin) & (lam_in < schedule.log_snr_max - margin)
    _close("dlog_snr_dt matches finite differences", d[interior], fd[interior], 1e-5, 1e-6)
    _require("dlog_snr_dt <= 0", bool((d <= 0).all()))
    clamped = (lam_in <= schedule.log_snr_min) | (lam_in >= schedule.log_snr_max)
    _require("dlog_snr_dt is 0 where clamped", bool((d[clamped] == 0).all()))

    free = (lam > schedule.log_snr_min) & (lam < schedule.log_snr_max)
    with _invariant("t_of_log_snr is defined where log_snr is not clamped"):
        back = schedule.t_of_log_snr(lam[free])
    _close("t_of_log_snr inverts log_snr", back, t[free], 1e-9, 1e-9)
    # on the range the schedule attains (its clamp range, by the end checks), |lambda| <= 20:
    # beyond, 1 - t or t is below float64's resolution near 1
    reached = schedule.log_snr(torch.tensor([1.0, 0.0], dtype=F64)).tolist()
    grid = torch.linspace(max(reached[0], -20.0), min(reached[1], 20.0), points, dtype=F64)
    with _invariant(f"t_of_log_snr is defined on [{grid[0].item()}, {grid[-1].item()}]"):
        there_and_back = schedule.log_snr(schedule.t_of_log_snr(grid))
    _close("log_snr inverts t_of_log_snr", there_and_back, grid, 1e-6, 1e-9)
    with _invariant("t_range (t_of_log_snr at the clamp ends) is defined"):
        lo, hi = schedule.t_range
    _require("t_range lies in [0, 1]", 0.0 <= lo <= hi <= 1.0, f"t_range = ({lo}, {hi})")
