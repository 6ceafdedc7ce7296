"""The errors the user sees: problems they can fix, each shown as a single line."""


class StageError(Exception):
    """A problem the user can fix (bad param, malformed file); shown as one line, exit 2."""


class FieldError(StageError):
    """Bad input in one named `field` of a request; the service answers 400 naming it."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class UnknownIdError(FieldError):
    """An id the bundle does not know where only a known one can be answered: a 404, since
    the client asked for something that is not there rather than asking badly."""


EXIT_USER_ERROR = 2
