"""Graph passes: cleanup (O1), fusion (O2), layout (O3), run by a PassManager."""

from . import cleanup, fusion, binary, layout  # noqa: F401  (imported for their registrations; binary after the foldings)
from .base import LEVELS, PASSES, OptimizationReport, Pass, PassManager, PassReport, optimize, register_pass

__all__ = ["LEVELS", "PASSES", "OptimizationReport", "Pass", "PassManager", "PassReport", "optimize", "register_pass"]
