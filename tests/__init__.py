"""The test suite, a package so that its modules import each other by name from the repository
root (`from tests.helpers import ...`), however pytest is started: `python -m pytest` or one file."""
