"""Grading machinery for the exercises: the ``impl`` fixture and ``--stubs-must-fail``.

A graded test takes the ``impl`` fixture and calls ``impl.some_function(...)``. ``impl`` is the
chapter's module from ``exercises/`` or ``solutions/`` (``--impl``, registered in
tests/conftest.py); the chapter is read from the test file's name (``test_ch00_quickstart.py``
grades ``ch00_quickstart``) unless the file sets ``CHAPTER = "..."``.

``--impl=exercises --stubs-must-fail`` turns every graded test's verdict around: a test that
fails on the untouched stubs is reported as passed, and one that passes is reported as a
failure, because a test that passes before anything is implemented grades nothing.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

# exercises/ and solutions/ sit at the repository root, next to tinyinfer/; they are not
# installed, so make them importable whichever directory pytest was started from.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    if config.getoption("--stubs-must-fail", default=False) and config.getoption("--impl", default=None) != "exercises":
        raise pytest.UsageError("--stubs-must-fail checks the stubs, so it needs --impl=exercises")


@pytest.fixture(scope="module")
def impl(request):
    """The module under test: ``exercises.<chapter>`` or ``solutions.<chapter>``."""
    package = request.config.getoption("--impl")
    chapter = getattr(request.module, "CHAPTER", None) or Path(request.module.__file__).stem.removeprefix("test_")
    return importlib.import_module(f"{package}.{chapter}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or "impl" not in getattr(item, "fixturenames", ()):
        return
    if not item.config.getoption("--stubs-must-fail"):
        return
    if report.passed:
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} passes vacuously on the stub: it must fail until the exercise is solved"
        )
    elif report.failed:
        report.outcome = "passed"
        report.longrepr = None
