"""Kernels: Numba implementations of ops, registered with the conditions they support.

Each module holds one algorithm family; importing this package registers them all.
"""

from .registry import KERNELS, Kernel, candidates, kernel_names, named, register_kernel
from .threads import configure_openmp

configure_openmp()  # before Numba's first parallel loop loads libgomp: short idle spins
from . import gemm  # noqa: E402,F401  (MatMul, Gemm, FusedGemm)
from . import conv, depthwise, pool, winograd  # noqa: E402,F401  (Conv, FusedConv, pooling)
from . import layout, nchwc  # noqa: E402,F401  (blocked layouts: ConvNCHWc, ToBlocked, FromBlocked)
from . import activation, concat, normalization  # noqa: E402,F401  (Relu; Concat; BatchNormalization, LRN)
from . import int8_gemm, int8_conv, int8_depthwise, int8_elementwise  # noqa: E402,F401  (QLinearMatMul, QLinearConv, QLinearAdd, int8 pooling)
from . import sparse  # noqa: E402,F401  (Conv with pruned weights, CSR)
from . import binary_conv  # noqa: E402,F401  (BinaryConv: XNOR and popcount)

__all__ = ["KERNELS", "Kernel", "candidates", "kernel_names", "named", "register_kernel"]
