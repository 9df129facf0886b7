"""Fixtures every kernel test file shares."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    """Kernel choices go to a fresh directory: no test reads a developer's selection cache."""
    monkeypatch.setenv("TINYINFER_CACHE_DIR", str(tmp_path))


@pytest.fixture
def only_this_chapters_kernels(monkeypatch):
    """Keep only the kernels of conv, winograd, depthwise, pool (and gemm) registered, so the
    session tests see which of *these* the runtime picks, whatever other modules add."""
    from tinyinfer.kernels import registry

    modules = {f"tinyinfer.kernels.{name}" for name in ("conv", "winograd", "depthwise", "pool", "gemm")}
    kept = {key: [k for k in kernels if k.build.__module__ in modules] for key, kernels in registry.KERNELS.items()}
    monkeypatch.setattr(registry, "KERNELS", kept)
