"""Exercises of the book, one module per chapter (``chNN_topic.py``).

Each function here is a stub: its docstring says what to compute, gives the formula and a
small worked example, and the body raises ``NotImplementedError`` until you replace it.
The same names, with complete answers, live in :mod:`solutions`. Grade your work with

    pytest tests/exercises --impl=exercises            # every exercise
    pytest tests/exercises --impl=exercises -m ex1     # one exercise
"""
