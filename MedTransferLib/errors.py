"""The one exception type users see: it names the input, what is wrong and what to do."""


class MedTransferError(Exception):
    """A problem with the user's input or environment, reported as one clear line.

    The CLI prints it without a traceback and exits non-zero; anything else is a bug.
    """
