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
    # Chapter 02 marks its graded tests ch02_ex1 ... as well, so that one chapter's exercise
    # can be picked from the whole of tests/exercises.
    for number in range(1, 5):
        config.addinivalue_line(
            "markers",
            f"ch02_ex{number}: graded test of chapter 02's exercise {number} (select with -m ch02_ex{number})",
        )
    for number in range(1, 4):  # chapter 04 (converter), likewise
        config.addinivalue_line(
            "markers",
            f"ch04_ex{number}: graded test of chapter 04's exercise {number} (select with -m ch04_ex{number})",
        )
    for number in range(1, 5):  # chapter 05 (optimizer), likewise
        config.addinivalue_line(
            "markers",
            f"ch05_ex{number}: graded test of chapter 05's exercise {number} (select with -m ch05_ex{number})",
        )
    for number in range(1, 5):  # chapter 06 (kernels), likewise
        config.addinivalue_line(
            "markers",
            f"ch06_ex{number}: graded test of chapter 06's exercise {number} (select with -m ch06_ex{number})",
        )
