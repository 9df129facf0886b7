"""Runtime: compile a Graph into a Plan and run it behind an onnxruntime-style session."""

from .plan import Plan, compile_plan
from .profiler import NodeRecord, Profile
from .session import BACKENDS, InferenceSession, NodeArg, load

__all__ = ["BACKENDS", "InferenceSession", "NodeArg", "NodeRecord", "Plan", "Profile", "compile_plan", "load"]
