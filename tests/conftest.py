"""Command-line options and marks shared by the whole test suite.

The options of the graded exercises (tests/exercises) are registered here, not in
tests/exercises/conftest.py: pytest reads options only from conftest files it loads before
parsing the command line, and this file is loaded both by ``pytest`` (the whole suite) and by
``pytest tests/exercises``. The fixture and the outcome inversion live in tests/exercises.
"""


def pytest_addoption(parser):
    group = parser.getgroup("exercises", "graded exercises (tests/exercises)")
    group.addoption(
        "--impl",
        choices=("solutions", "exercises"),
        default="solutions",
        help="which implementation tests/exercises grades: your exercises/ or the solutions/ (default)",
    )
    group.addoption(
        "--stubs-must-fail",
        action="store_true",
        default=False,
        help="with --impl=exercises on untouched stubs: a graded test passes only if it fails on "
        "the stubs, proving no graded test can pass vacuously",
    )


def pytest_configure(config):
    for number in range(1, 7):
        config.addinivalue_line(
            "markers",
            f"ex{number}: graded test of exercise {number} of a chapter (tests/exercises; "
            f"select with -m ex{number})",
        )
    # Each chapter marks its graded tests chNN_exK as well (ch02_ex1 ...), so that one chapter's
    # exercise can be picked from the whole of tests/exercises with -m chNN_exK.
    for chapter in ("01", "02", "03a", "03b", "04", "05", "06"):
        for number in range(1, 7):
            config.addinivalue_line(
                "markers",
                f"ch{chapter}_ex{number}: graded test of chapter {chapter}'s exercise {number} "
                f"(select with -m ch{chapter}_ex{number})",
            )
