"""Tools to test discrete-diffusion code, your own kernels and schedules included.

``check_kernel`` / ``check_schedule`` (torch only) run every invariant of the library's math;
``discdiff.testing.strategies`` holds hypothesis strategies (needs the ``[test]`` extra)::

    from discdiff.testing import check_kernel
    check_kernel(MyKernel(vocab_size=8, mask_id=7))   # raises AssertionError naming the invariant
"""

from discdiff.testing.checks import check_kernel, check_schedule

__all__ = ["check_kernel", "check_schedule"]
