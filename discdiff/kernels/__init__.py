"""Forward processes ``q_lambda(z | x) = sigmoid(lambda) e_x + sigmoid(-lambda) pi_lambda``.

Each kernel offers ``marginal``, ``corrupt``, ``transition``, ``posterior``, ``weight``, its
mixing distribution ``pi`` / ``dpi`` and draws from it.  :class:`Dense` is the matrix oracle.
"""

from discdiff.kernels.base import Kernel
from discdiff.kernels.dense import Dense, DenseLossTerms
from discdiff.kernels.gidd import GIDD
from discdiff.kernels.hybrid import Hybrid
from discdiff.kernels.masked import Masked
from discdiff.kernels.mixture import UniformMaskMixture
from discdiff.kernels.prior import Prior
from discdiff.kernels.uniform import Uniform

__all__ = [
    "Kernel",
    "UniformMaskMixture",
    "Uniform",
    "Masked",
    "Hybrid",
    "GIDD",
    "Prior",
    "Dense",
    "DenseLossTerms",
]
