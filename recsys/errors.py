"""The one error type the user sees: a problem they can fix, shown as a single line."""


class StageError(Exception):
    """A problem the user can fix (bad param, malformed file); shown as one line, exit 2."""


EXIT_USER_ERROR = 2
