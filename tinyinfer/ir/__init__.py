"""The intermediate representation: Graph, Node, Value and element types."""

from . import dtypes
from .graph import KINDS, Dim, Graph, Node, Shape, Value

__all__ = ["KINDS", "Dim", "Graph", "Node", "Shape", "Value", "dtypes"]
