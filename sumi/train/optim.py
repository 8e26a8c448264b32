"""Optimizer, learning-rate schedule and gradient clipping of Sumi's recipe.

Sumi (arXiv 2606.19005; docs/math.md "Sumi recipe facts"): AdamW with betas ``(0.9, 0.95)``, weight decay
``0.1``, gradient clipping at global norm ``1.0``, and a Warmup-Stable-Decay schedule (2000
warmup steps, peak ``2e-4``, floor ``2e-5``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from sumi._checks import check_int, check_number


# -- optimizer ---------------------------------------------------------------------------------
def param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(decay, no_decay)``: the trainable parameters split for weight decay.

    Decay: the 2-D ``weight`` of every ``nn.Linear`` (attention and MLP projections, and the
    untied ``lm_head``).  No decay: everything else, i.e. the norm gains (1-D) and the input
    embedding.  Norm gains set a scale, and decaying them toward 0 fights the normalization.
    The input embedding is a lookup table: a row gets a gradient only when its token appears in
    the batch, while decoupled decay shrinks every row every step, so rare tokens (of 100,278)
    would drift toward 0 for reasons unrelated to the data; OLMo 2 (arXiv 2501.00656) likewise
    drops weight decay on embeddings.  A parameter shared by several modules is listed once (a weight
    tied between the embedding and a ``Linear`` head counts as a ``Linear`` weight: decay).
    """
    decay_ids = {id(m.weight) for m in model.modules()
                 if isinstance(m, nn.Linear) and isinstance(m.weight, Tensor) and m.weight.dim() == 2}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():  # deduplicated: a shared parameter appears once
        if p.requires_grad:
            (decay if id(p) in decay_ids else no_decay).append(p)
    return decay, no_decay


def build_optimizer(model: nn.Module, *, lr: float, betas: tuple[float, float] = (0.9, 0.95),
                    weight_decay: float = 0.1, eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW (decoupled decay; Loshchilov and Hutter 2019) with Sumi's defaults and two groups:
    ``weight_decay`` on the 2-D ``nn.Linear`` weights, ``0`` on norms and the input embedding
    (:func:`param_groups` says why).  ``lr`` is the initial rate; a schedule (:class:`WSD`)
    overwrites ``group["lr"]`` every step.  The groups carry ``name`` = ``"decay"`` / ``"no_decay"``.
    """
    lr = check_number("lr", lr, 0.0)
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair, got {betas!r}")
    betas = (check_number("betas[0]", betas[0], 0.0, 1.0, open_hi=True),
             check_number("betas[1]", betas[1], 0.0, 1.0, open_hi=True))
    weight_decay = check_number("weight_decay", weight_decay, 0.0)
    eps = check_number("eps", eps, 0.0, open_lo=True)
    decay, no_decay = param_groups(model)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters")
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


# -- schedule ----------------------------------------------------------------------------------
_SHAPES = ("1-sqrt", "linear")


class WSD:
    """Warmup-Stable-Decay learning rate (Hu et al., "MiniCPM", arXiv 2404.06395; Hägele et al.,
    "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations", NeurIPS 2024,
    arXiv 2405.18392).  With ``D = round(decay_fraction * total_steps)`` decay steps starting at
    ``s0 = total_steps - D``:

    - warmup, ``0 <= step < warmup_steps``: ``peak * step / warmup_steps`` (0 at step 0; ``peak``
      at ``step = warmup_steps``);
    - stable, ``warmup_steps <= step <= s0``: ``peak``;
    - decay, ``s0 < step <= total_steps``: ``floor + (peak - floor) * f((step - s0) / D)`` with
      ``f(u) = 1 - sqrt(u)`` (default) or ``1 - u`` (``shape="linear"``), reaching ``floor`` at
      ``total_steps``;
    - after ``total_steps``: ``floor``.

    The default cooldown is ``1 - sqrt``: Hägele et al. found it beats a linear cooldown of the
    same length (it leaves the rate high longer, then drops fast).  ``lr(step)`` is a pure
    function; the training loop owns the step counter, and :meth:`state_dict` holds only the
    hyperparameters (checked against the current ones on :meth:`load_state_dict`).
    """

    def __init__(self, peak_lr: float, floor_lr: float, warmup_steps: int, total_steps: int,
                 decay_fraction: float = 0.2, *, shape: str = "1-sqrt") -> None:
        self.peak_lr = check_number("peak_lr", peak_lr, 0.0, open_lo=True)
        self.floor_lr = check_number("floor_lr", floor_lr, 0.0)
        if self.floor_lr > self.peak_lr:
            raise ValueError(f"floor_lr ({floor_lr}) must not exceed peak_lr ({peak_lr})")
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 0)
        self.total_steps = check_int("total_steps", total_steps, 1)
        self.decay_fraction = check_number("decay_fraction", decay_fraction, 0.0, 1.0)
        if shape not in _SHAPES:
            raise ValueError(f"shape must be one of {_SHAPES}, got {shape!r}")
        self.shape = shape
        self.decay_steps = int(round(self.decay_fraction * self.total_steps))
        if self.warmup_steps + self.decay_steps > self.total_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) + decay steps ({self.decay_steps} = "
                             f"round({self.decay_fraction} * {self.total_steps})) exceed total_steps ({self.total_steps})")
        self.decay_start = self.total_steps - self.decay_steps

    def __repr__(self) -> str:
        return (f"WSD(peak_lr={self.peak_lr}, floor_lr={self.floor_lr}, warmup_steps={self.warmup_steps}, "
                f"total_steps={self.total_steps}, decay_fraction={self.decay_fraction}, shape={self.shape!r})")

    def lr(self, step: int) -> float:
        """The learning rate at optimizer step ``step`` (0-based)."""
        step = check_int("step", step, 0)
        if step < self.warmup_steps:
            return self.peak_lr * step / self.warmup_steps
        if step <= self.decay_start:
            return self.peak_lr
        if step >= self.total_steps:
            return self.floor_lr
        u = (step - self.decay_start) / self.decay_steps
        f = 1.0 - math.sqrt(u) if self.shape == "1-sqrt" else 1.0 - u
        return self.floor_lr + (self.peak_lr - self.floor_lr) * f

    __call__ = lr

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every param group's ``lr`` to ``lr(step)``; returns it."""
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"peak_lr": self.peak_lr, "floor_lr": self.floor_lr, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "decay_fraction": self.decay_fraction, "shape": self.shape}

    def load_state_dict(self, state: dict) -> None:
        """Restore the hyperparameters from :meth:`state_dict` (validated as in ``__init__``)."""
        expected = set(self.state_dict())
        if not isinstance(state, dict) or set(state) != expected:
            raise ValueError(f"state must be a dict with keys {sorted(expected)}, got {state!r}")
        fresh = WSD(state["peak_lr"], state["floor_lr"], state["warmup_steps"], state["total_steps"],
                    state["decay_fraction"], shape=state["shape"])
        self.__dict__.update(fresh.__dict__)


# -- clipping ----------------------------------------------------------------------------------
def clip_grad_norm(params: Iterable[Tensor] | Tensor, max_norm: float) -> Tensor:
    """Scale the gradients of ``params`` in place so that their global L2 norm is at most
    ``max_norm`` (``torch.nn.utils.clip_grad_norm_``, foreach kernels); returns the norm
    *before* clipping as a float32 scalar tensor (a plain tensor also for DTensor parameters:
    the norm is reduced over the mesh, then gathered).  Parameters without a gradient are
    skipped; none at all gives 0.  A non-finite norm is returned, not raised, so the caller can
    skip the step.
    """
    max_norm = check_number("max_norm", max_norm, 0.0, open_lo=True)
    params = [params] if isinstance(params, Tensor) else list(params)
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        device = params[0].device if params else torch.device("cpu")
        return torch.zeros((), dtype=torch.float32, device=device)
    devices = {p.grad.device.type for p in with_grad}
    foreach = all(_foreach_supported(d) for d in devices)
    norm = torch.nn.utils.clip_grad_norm_(with_grad, max_norm, foreach=foreach or None)
    full_tensor = getattr(norm, "full_tensor", None)  # DTensor: materialize the replicated norm
    if callable(full_tensor):
        norm = full_tensor()
    return norm.detach().to(torch.float32)


def _foreach_supported(device_type: str) -> bool:
    try:
        from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices
    except ImportError:  # pragma: no cover - older torch
        return device_type == "cuda"
    return device_type in (*_get_foreach_kernels_supported_devices(), "cpu")


__all__ = ["build_optimizer", "param_groups", "WSD", "clip_grad_norm"]
