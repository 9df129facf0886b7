"""BLAS and OpenMP thread settings of the numba backend (tinyinfer.kernels.threads)."""

from __future__ import annotations

import numpy as np

from tinyinfer.kernels import threads


def test_single_threaded_blas_limits_blas_during_the_call_and_restores_it():
    controls = threads.blas_controls()
    before = [get() for _, get in controls]
    seen = []

    def op(a, b):
        seen.extend(get() for _, get in controls)
        return a @ b

    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(threads.single_threaded_blas(op)(a, a.T), a @ a.T)
    assert all(count == 1 for count in seen)
    assert [get() for _, get in controls] == before


def test_single_threaded_blas_restores_the_count_when_the_op_raises():
    controls = threads.blas_controls()
    before = [get() for _, get in controls]

    def failing():
        raise ValueError("boom")

    try:
        threads.single_threaded_blas(failing)()
    except ValueError:
        pass
    assert [get() for _, get in controls] == before


def test_configure_openmp_leaves_a_chosen_policy_alone(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert threads.configure_openmp() is False
    import os

    assert "GOMP_SPINCOUNT" not in os.environ
