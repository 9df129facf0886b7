"""Answers to the exercises in :mod:`exercises`: same modules, same names, same signatures.

Read one only after trying the exercise; ``pytest tests/exercises`` (the default,
``--impl=solutions``) checks that every answer here passes its graded tests.
"""
