"""The one exception type that mechest raises for bad user input."""


class MechestError(ValueError):
    """A problem with what the user passed (shapes, values, files, options).

    The command-line tool prints its message as one line and exits with code 2.
    """
