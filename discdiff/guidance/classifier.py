"""Classifier guidance on a step rule: D-CBG (Schiff et al. 2025, "Simple Guidance Mechanisms for
Discrete Diffusion Models", arXiv 2412.10193), docs/math.md, "Classifier guidance".

A noisy classifier ``p(y | z, lambda)`` tilts the denoiser's distribution at every position ``l``
toward the tokens that make the target class more likely once written there:

    log p'(x_l = v) = log p(x_l = v | z_t) + gamma g[l, v] + const,
    g[l, v] = log p(y | z_t with position l set to v, lambda_s),

so ``p'(x_l = v) ∝ p(y | z_t^{l <- v}, lambda_s)^gamma p(x_l = v | z_t)``, the D-CBG tilt
``p^gamma(z_s^l = v | z_t, y) ∝ p(y | z_s^l = v, z_t)^gamma p(z_s^l = v | z_t)`` applied to the
denoiser's prediction, from which the wrapped step rule builds its reverse transition.  ``g`` is
computed exactly (``L V`` classifier evaluations per step) or to first order in the one-hot input
(one forward and one backward pass per step).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from discdiff._checks import (
    align_log_snr,
    broadcast_base,
    check_finite_float,
    check_int,
    check_log_snr,
    check_logits,
    check_tokens,
    compute_dtype,
)
from discdiff.guidance.classifier_free import uncond_log_floor
from discdiff.samplers.base import StepOutput, StepRule
from discdiff.samplers.categorical import default_chunk_rows
from discdiff.typing import Logits, LogSNR, Mask, Tokens

APPROXIMATIONS = ("taylor", "exact")


def check_approximation(approximation: object) -> str:
    """``"taylor"`` or ``"exact"``."""
    if approximation not in APPROXIMATIONS:
        raise ValueError(f"approximation must be 'taylor' or 'exact', got {approximation!r}")
    return approximation


def check_target(target: object) -> Tensor:
    """Target class ids: an integer tensor ``[batch]``."""
    if not isinstance(target, Tensor) or target.is_floating_point() or target.is_complex() \
            or target.dtype == torch.bool or target.dim() != 1:
        got = f"dtype {target.dtype}, shape {tuple(target.shape)}" if isinstance(target, Tensor) else repr(target)
        raise TypeError(f"target must be an integer tensor of class ids [batch], got {got}")
    return target


def candidate_log_likelihoods(classifier: Callable[[Tensor, Tensor], Tensor], z: Tokens, lam: LogSNR,
                              target: Tensor, vocab_size: int, *, approximation: str = "taylor",
                              dtype: torch.dtype = torch.float32, rows: int | None = None,
                              validate: bool = True) -> Tensor:
    """``g[b, l, v] = log p(y_b | z_b with position l set to v, lam_b)`` for every position and
    token: the classifier term of D-CBG (Schiff et al. 2025, arXiv 2412.10193; docs/math.md,
    "Classifier guidance").

    The classifier reads one-hot sequences: ``classifier(x, lam)`` with ``x`` of shape
    ``[n, seq, V]`` in ``dtype`` (a token classifier embeds it as ``x @ E``) and returns class
    logits ``[n, n_classes]``; ``log p(y | x)`` is their ``log_softmax`` at ``y`` in ``dtype``.
    Each sequence must be classified on its own (no batch statistics).

    - ``"exact"``: every one of the ``seq V`` one-token changes of each sequence is classified,
      ``rows`` candidates per call (default: about ``2^20`` one-hot elements per call on CPU,
      the samplers' chunk size): ``seq V`` classifier evaluations per sequence, feasible for small
      vocabularies and short sequences only.
    - ``"taylor"``: first order in the one-hot input around ``x = onehot(z)``:
      ``g[l, v] ~= log p(y | z) + G[l, v] - G[l, z_l]``, ``G = grad_x log p(y | x)``: one forward
      and one backward pass (under ``torch.enable_grad``, also when sampling runs under
      ``no_grad`` or ``inference_mode``).  Exact when ``log p(y | x)`` is affine in ``x``; the
      error is the second-order remainder of the expansion otherwise.  Vocabulary-sized tensors:
      the one-hot input and its gradient, which becomes the output (``seq V`` values each: about
      0.8 GB each in float32 at ``seq = 2048``, ``V = 100,278``), plus what the classifier's
      backward holds (for ``x @ E``, the gradient itself).

    Both are clamped to ``[log tiny, 0]`` (``tiny``: the smallest positive normal number of
    ``dtype``), the range of a floored log-probability: a first-order estimate above 0 is moved
    to the nearest possible value, and a class probability of 0 gives a large finite penalty
    instead of ``-inf`` (as :func:`~discdiff.guidance.cfg` floors ``log p(x)``), so the tilt stays
    finite.

    Args:
        classifier: ``classifier(x, lam) -> logits [n, n_classes]``, ``x`` one-hot ``[n, seq, V]``.
        z: tokens ``[batch, seq]``.
        lam: the log-SNR passed to the classifier, float64 ``[batch]`` or ``[batch, seq]``.
        target: the class ``y`` of each sequence, integer ``[batch]``.
        vocab_size: ``V``, the one-hot width.
        approximation: ``"taylor"`` or ``"exact"``.
        dtype: the one-hot input's and the result's floating dtype.
        rows: candidates per classifier call for ``"exact"`` (``None``: the default above).
        validate: check token ids, target ids and the classifier's values (host syncs).

    Returns:
        ``g``, ``[batch, seq, V]`` in ``dtype``, no gradient.
    """
    approximation = check_approximation(approximation)
    V = check_int("vocab_size", vocab_size, lo=1)
    target = check_target(target)
    if rows is not None:
        check_int("rows", rows, lo=1)
    check_tokens("z", z, V, validate=validate)
    if z.dim() != 2:
        raise ValueError(f"classifier guidance needs tokens [batch, seq], got shape {tuple(z.shape)}")
    if target.shape[0] != z.shape[0]:
        raise ValueError(f"target has {target.shape[0]} class ids but the batch has {z.shape[0]} sequences; "
                         f"give one target class per sequence")
    if not isinstance(lam, Tensor) or not lam.is_floating_point() or lam.shape not in (z.shape[:1], z.shape):
        got = f"{lam.dtype} {tuple(lam.shape)}" if isinstance(lam, Tensor) else type(lam).__name__
        raise ValueError(f"lam must be a floating-point tensor [batch] or [batch, seq] = {tuple(z.shape)}, got {got}")
    target = target.to(z.device)
    if approximation == "exact":
        with torch.no_grad():
            g = _exact(classifier, z, lam, target, V, dtype, rows, validate)
    else:
        g = _taylor(classifier, z, lam, target, V, dtype, validate)
    return g.clamp_(uncond_log_floor(dtype), 0.0)


def _target_log_probs(out: object, target: Tensor, dtype: torch.dtype, validate: bool) -> Tensor:
    """``log_softmax(out)[i, target[i]]`` in ``dtype``, after checking the classifier's output."""
    n = target.shape[0]
    if not isinstance(out, Tensor) or not out.is_floating_point() or out.dim() != 2 or out.shape[0] != n:
        got = f"{out.dtype} {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the classifier must return floating-point class logits [{n}, n_classes] for {n} "
                         f"sequences, got {got}")
    if validate and not torch.compiler.is_compiling():
        if bool((target < 0).any()) or bool((target >= out.shape[1]).any()):
            raise ValueError(f"target holds class ids in [{int(target.min())}, {int(target.max())}], outside "
                             f"[0, {out.shape[1]}) of the classifier's {out.shape[1]} classes")
        if bool(torch.isnan(out).any()) or bool((out == torch.inf).any()):
            raise ValueError("the classifier's logits contain NaN or +inf")
    return torch.log_softmax(out.to(dtype), -1).gather(-1, target[:, None]).squeeze(-1)


def one_hot(z: Tensor, V: int, dtype: torch.dtype) -> Tensor:
    """``onehot(z)`` ``[*z.shape, V]`` in ``dtype``, written directly (``F.one_hot`` would first
    build an int64 tensor, twice the float32 size)."""
    return torch.zeros(*z.shape, V, dtype=dtype, device=z.device).scatter_(-1, z[..., None].long(), 1.0)


def _exact(classifier: Callable, z: Tensor, lam: Tensor, target: Tensor, V: int, dtype: torch.dtype,
           rows: int | None, validate: bool) -> Tensor:
    B, L = z.shape
    per_seq = L * V
    total = B * per_seq
    step = rows or default_chunk_rows(per_seq, z.device)
    onehot = one_hot(z, V, dtype)
    eye = torch.eye(V, dtype=dtype, device=z.device)
    out = torch.empty(total, dtype=dtype, device=z.device)
    # candidate n is (sequence b, position l, token v) in row-major order: out.view(B, L, V)
    for a in range(0, total, step):
        n = torch.arange(a, min(a + step, total), device=z.device)
        b, l, v = n // per_seq, (n // V) % L, n % V
        x = onehot[b]
        x[torch.arange(n.numel(), device=z.device), l] = eye[v]
        out[a:a + n.numel()] = _target_log_probs(classifier(x, lam[b]), target[b], dtype, validate)
    return out.view(B, L, V)


def _taylor(classifier: Callable, z: Tensor, lam: Tensor, target: Tensor, V: int, dtype: torch.dtype,
            validate: bool) -> Tensor:
    # inference_mode(False): the one-hot input must be an ordinary tensor that autograd can track,
    # even when sampling runs under torch.inference_mode (lam and target are copied out of it)
    with torch.inference_mode(False), torch.enable_grad():
        x = one_hot(z.clone(), V, dtype).requires_grad_(True)
        log_p = _target_log_probs(classifier(x, lam.clone()), target.clone(), dtype, validate)
        if not log_p.requires_grad:
            raise ValueError("approximation='taylor' needs a classifier differentiable in its one-hot input "
                             "(its output carries no gradient); use approximation='exact'")
        (grad,) = torch.autograd.grad(log_p.sum(), x, allow_unused=True)
    log_p = log_p.detach()
    if grad is None:  # log p(y | x) does not depend on x: every candidate has the same value
        return log_p[:, None, None].expand(*z.shape, V).clone()
    # g[l, v] = log p(y | z) + G[l, v] - G[l, z_l], in place in the gradient
    at_z = grad.gather(-1, z[..., None])
    return grad.sub_(at_z).add_(log_p[:, None, None])


def classifier_log_snr(lam_s: Tensor, shape: torch.Size) -> Tensor:
    """The log-SNR handed to the classifier: ``lam_s`` (float64, broadcast to the tokens'
    ``shape``) as ``[batch]`` when it is one value per sequence, else ``[batch, seq]``."""
    base = broadcast_base(align_log_snr("lam_s", lam_s, shape))
    if base.shape[-1] == 1:
        return base[..., 0].expand(shape[0]).clone()
    return base.expand(shape).clone()


class ClassifierGuided(StepRule):
    """A step rule guided by a noisy classifier: D-CBG (Schiff et al. 2025, "Simple Guidance
    Mechanisms for Discrete Diffusion Models", arXiv 2412.10193; docs/math.md, "Classifier
    guidance").

    Each step first tilts the denoiser's distribution at every position ``l``,

        logits'[b, l, v] = log_softmax(logits)[b, l, v] + gamma g[b, l, v],
        g[b, l, v] = log p(y_b | z_t with position l set to v, lam_s)

    (``g`` from :func:`candidate_log_likelihoods`, float32, or float64 for float64 logits), then
    calls the wrapped ``rule`` unchanged on ``logits'`` (it renormalizes them and applies the
    temperature and filters to the tilted distribution).  So the denoiser's prediction becomes
    ``p'(x_l = v) ∝ p(y | z_t^{l <- v}, lam_s)^gamma p(x_l = v | z_t)``, the D-CBG tilt
    ``p^gamma(z_s^l = v | z_t, y) ∝ p(y | z_s^l = v, z_t)^gamma p(z_s^l = v | z_t)`` applied to
    the prediction the rule builds its transition from.  With a masked kernel this is D-CBG's
    distribution of the token a masked position is written with; the probability of writing it
    at all is the rule's (D-CBG also tilts "stay masked", by ``p(y | z_t)^gamma``).

    The classifier is evaluated at ``lam_s``, the level of ``z_s``: the candidate sequence is a
    value of ``z_s`` (the step's output differs from ``z_t`` where the rule writes), and Schiff
    et al. tilt the reverse transition with the classifier at the level it leads to.  It is
    called ``classifier(x, lam)`` with ``x`` one-hot ``[n, seq, V]`` and ``lam`` float64 ``[n]``
    (``[n, seq]`` when ``lam_s`` is per token); the same interface serves both approximations.

    ``gamma = 0`` calls the rule with the denoiser's logits as they are, without calling the
    classifier: identical tokens from the same generator.  Frozen positions are tilted like the
    others (the rule keeps them; skipping them would need a data-dependent shape).  The mask
    state's column (masked and hybrid kernels) is tilted too; ``x_hat`` ignores it, and ``g`` is
    finite, so no NaN appears there.  Cost per step: ``"exact"``, ``seq V`` classifier
    evaluations per sequence; ``"taylor"``, one forward and one backward pass and three
    vocabulary-sized tensors (the one-hot input, the gradient that becomes the tilted logits,
    and the classifier's own backward).

    Args:
        rule: the step rule to guide.
        classifier: ``classifier(x, lam) -> class logits [n, n_classes]`` (log-softmaxed here).
        scale: the guidance strength ``gamma``, a finite number ``>= 0``.
        approximation: ``"taylor"`` (first order, any vocabulary) or ``"exact"`` (enumeration).
        target: the class ``y`` of each sequence, integer ``[batch]``; its length is checked
            against the batch at every step, its values against the classes at validated steps.
        rows: candidates per classifier call for ``"exact"`` (``None``: the default).
    """

    def __init__(self, rule: StepRule, classifier: Callable[[Tensor, Tensor], Tensor], scale: float, *,
                 target: Tensor, approximation: str = "taylor", rows: int | None = None) -> None:
        if not isinstance(rule, StepRule):
            raise TypeError(f"rule must be a discdiff StepRule, got {rule!r}")
        if not callable(classifier):
            raise TypeError(f"classifier must be callable (one-hot [n, seq, V], lam) -> class logits, "
                            f"got {type(classifier).__name__}")
        self.scale = check_finite_float("scale", scale, lo=0.0)
        self.approximation = check_approximation(approximation)
        self.target = check_target(target)
        if rows is not None:
            check_int("rows", rows, lo=1)
        self.rule, self.classifier, self.rows = rule, classifier, rows
        self.vocab_size, self.mask_id = rule.vocab_size, rule.mask_id

    def __repr__(self) -> str:
        return (f"ClassifierGuided({self.rule!r}, {self.classifier!r}, scale={self.scale}, "
                f"approximation={self.approximation!r})")

    def step_info(self, logits: Logits, z_t: Tokens, lam_t: LogSNR | float, lam_s: LogSNR | float,
                  frozen: Mask | None = None, temperature: float = 1.0, generator: torch.Generator | None = None,
                  *, validate: bool = True) -> StepOutput:
        """The wrapped rule's :meth:`~discdiff.samplers.StepRule.step_info` on
        :meth:`tilted_logits` (on ``logits`` themselves at scale 0); the rule validates the rest."""
        if self.scale == 0:
            return self.rule.step_info(logits, z_t, lam_t, lam_s, frozen, temperature, generator, validate=validate)
        tilted = self.tilted_logits(logits, z_t, lam_s, validate=validate)
        return self.rule.step_info(tilted, z_t, lam_t, lam_s, frozen, temperature, generator, validate=validate)

    def _step(self, logits: Tensor, z_t: Tensor, lam_t: Tensor, lam_s: Tensor, frozen: Tensor,
              temperature: float, generator: torch.Generator | None) -> StepOutput:
        if self.scale != 0:
            logits = self.tilted_logits(logits, z_t, lam_s, validate=False)
        return self.rule._step(logits, z_t, lam_t, lam_s, frozen, temperature, generator)

    def tilted_logits(self, logits: Logits, z_t: Tokens, lam_s: LogSNR | float, *, validate: bool = True) -> Logits:
        """``log_softmax(logits) + gamma g`` (``[batch, seq, V]``, float32, or float64 for
        float64 logits): the guided denoiser's log-probabilities, up to a constant per position.

        Args:
            logits: the denoiser's logits at ``z_t``, ``[batch, seq, V]``.
            z_t: the current tokens, ``[batch, seq]``.
            lam_s: the log-SNR of the step's output (per sequence or per token).
            validate: check the values of the inputs and of the classifier's output (host syncs).
        """
        if not isinstance(logits, Tensor) or not logits.is_floating_point():
            got = f"dtype {logits.dtype}" if isinstance(logits, Tensor) else type(logits).__name__
            raise TypeError(f"logits (the denoiser's output) must be a floating-point tensor [batch, seq, V], "
                            f"got {got}")
        if not isinstance(z_t, Tensor) or z_t.dim() != 2 or logits.shape[:-1] != z_t.shape or logits.dim() != 3:
            got = tuple(z_t.shape) if isinstance(z_t, Tensor) else type(z_t).__name__
            raise ValueError(f"classifier guidance needs tokens [batch, seq] and logits [batch, seq, V], got tokens "
                             f"{got} and logits {tuple(logits.shape)}")
        V = logits.shape[-1]
        if self.vocab_size is not None and V != self.vocab_size:
            raise ValueError(f"logits have vocabulary {V} but the kernel has {self.vocab_size} states")
        check_logits("the denoiser's logits", logits, self.mask_id, validate=validate)
        lam_s = torch.as_tensor(lam_s, dtype=torch.float64, device=z_t.device)
        check_log_snr("lam_s", lam_s, allow_inf=True, validate=validate)
        dtype = compute_dtype(logits)
        g = candidate_log_likelihoods(self.classifier, z_t, classifier_log_snr(lam_s, z_t.shape), self.target, V,
                                      approximation=self.approximation, dtype=dtype, rows=self.rows,
                                      validate=validate)
        # gamma g + log_softmax(logits), in place in g a chunk of rows at a time (no other
        # vocabulary-sized tensor); -inf logits stay -inf since g is finite
        flat_g, flat = g.mul_(self.scale).view(-1, V), logits.detach().reshape(-1, V)
        step = default_chunk_rows(V, flat.device)
        for a in range(0, flat.shape[0], step):
            flat_g[a:a + step].add_(torch.log_softmax(flat[a:a + step], -1, dtype=dtype))
        return g
