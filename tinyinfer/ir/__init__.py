"""The intermediate representation: Graph, Node, Value and element types."""

from . import dtypes
from .graph import Dim, Graph, Node, Shape, Value

__all__ = ["Dim", "Graph", "Node", "Shape", "Value", "dtypes"]
