"""Keeping NumPy's BLAS threads, and Numba's own idle threads, off the cores doing the work.

A ``backend="numba"`` session runs its kernels on Numba's thread pool (OpenMP here), and
the nodes no kernel claims on their NumPy reference op, which may call BLAS (``np.matmul``,
``np.einsum``, ``np.dot``) with BLAS's *own* thread pool. Both pools busy-wait for a while
after a parallel region, so on a machine with as many cores as threads each pool's waiting
threads take the cores the other pool is trying to work on: measured on 2 cores, ResNet-50
ran 3x slower with both pools at 2 threads than with OpenBLAS at 1.

:func:`single_threaded_blas` wraps a reference op so that it runs with BLAS limited to one
thread (restored after the call). The BLAS libraries are found the way threadpoolctl finds
them, without needing it: the shared objects with ``openblas`` in their name that the
process has loaded (``/proc/self/maps``), and their ``*_set_num_threads`` entry points,
including the prefixed ones of the ``scipy-openblas`` build NumPy ships. Elsewhere, or when
none is found, the wrapper changes nothing.

Numba's OpenMP threads (GNU libgomp) have the same habit on their own: after a parallel
region an idle thread spins ``GOMP_SPINCOUNT`` times (300 000 by default) before it sleeps.
On a Xeon, whose ``pause`` instruction takes about 140 cycles, that is over 10 ms of a core
for every gap between two kernels. When other processes share the cores, the spinning
threads use up their time slices and are descheduled, and every later parallel region waits
for them at its closing barrier: on 2 cores shared with other work, ResNet-50 ran 2-3x slower
than with short spins (measured, ResNet-50 batch 1, load average 6: best of 15 runs 340-880
ms with the default, 215-280 ms with 10 000 spins, 150-160 ms with 1 000). A spin of 1 000
(~50 us) still bridges the gap between two kernels of a model run on an idle machine.
:func:`configure_openmp` (run when ``tinyinfer.kernels`` is imported)
sets a short spin, :data:`SPIN_COUNT`, unless the environment already chose one; it has to
run before libgomp is loaded (Numba loads it at its first parallel loop), and does nothing
after.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Callable

#: libgomp's spin count for idle threads set by :func:`configure_openmp` (see the module docstring).
SPIN_COUNT = 1000

#: (library, set_num_threads, get_num_threads) symbol name pairs OpenBLAS builds export.
_SYMBOLS = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)


@functools.lru_cache(maxsize=1)
def blas_controls() -> tuple[tuple[Callable, Callable], ...]:
    """``(set_num_threads, get_num_threads)`` of every OpenBLAS loaded in this process (cached)."""
    import numpy  # noqa: F401  (loads NumPy's BLAS, so it is among the mapped libraries)

    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line})
    except OSError:
        return ()
    controls = []
    for path in paths:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _SYMBOLS:
            setter, getter = getattr(library, set_name, None), getattr(library, get_name, None)
            if setter is not None and getter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                controls.append((setter, getter))
                break
    return tuple(controls)


def single_threaded_blas(fn: Callable) -> Callable:
    """``fn`` run with every OpenBLAS of the process limited to one thread (then restored).

    Costs a few microseconds per call; returns ``fn`` itself when no BLAS control is found.
    """
    controls = blas_controls()
    if not controls:
        return fn

    @functools.wraps(fn)
    def limited(*args, **kwargs):
        previous = [get() for _, get in controls]
        for (set_threads, _), count in zip(controls, previous):
            if count != 1:
                set_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            for (set_threads, _), count in zip(controls, previous):
                if count != 1:
                    set_threads(count)

    return limited


def configure_openmp() -> bool:
    """Shorten libgomp's idle spinning, unless the environment chose a policy or it is too late.

    Returns whether the setting can take effect (libgomp not yet loaded in this process).
    """
    if "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return False
    try:
        with open("/proc/self/maps") as maps:
            if any("libgomp" in line for line in maps):
                return False  # already initialised: it read its environment when it was loaded
    except OSError:
        return False
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return True
