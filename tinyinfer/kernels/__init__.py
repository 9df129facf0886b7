"""Kernels: Numba implementations of ops, registered with the conditions they support.

Each module holds one algorithm family; importing this package registers them all.
"""

from .registry import KERNELS, Kernel, candidates, kernel_names, named, register_kernel

__all__ = ["KERNELS", "Kernel", "candidates", "kernel_names", "named", "register_kernel"]
