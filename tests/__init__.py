"""The test suite; `tests.helpers` is shared by its modules and fixtures."""
