"""Kernels: Numba implementations of ops, registered with the conditions they support.

Each module holds one algorithm family; importing this package registers them all.
"""

from .registry import KERNELS, Kernel, candidates, kernel_names, named, register_kernel
from . import gemm  # noqa: E402,F401  (MatMul, Gemm, FusedGemm)
from . import conv, depthwise, pool, winograd  # noqa: E402,F401  (Conv, FusedConv, pooling)
from . import layout, nchwc  # noqa: E402,F401  (blocked layouts: ConvNCHWc, ToBlocked, FromBlocked)

__all__ = ["KERNELS", "Kernel", "candidates", "kernel_names", "named", "register_kernel"]
