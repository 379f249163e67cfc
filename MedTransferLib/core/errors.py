"""The one exception type users see: it names the input, what is wrong and what to do."""


class MedTransferError(Exception):
    """A problem with the user's input or environment, reported as one clear line.

    The CLI prints it without a traceback and exits non-zero; anything else is a bug.
    """


class OutOfMemory(MedTransferError):
    """The device ran out of memory for one training batch (``batch``: its size)."""

    def __init__(self, batch: int, shape, device: str):
        self.batch = batch
        half = max(1, batch // 2)
        super().__init__(
            f"{device} ran out of memory for a batch of {batch} (input {list(shape)}); lower --batch-size "
            f"(e.g. {half}) or --patch, use --mode 2.5d instead of 3d, or add --oom-retry to halve the "
            f"batch automatically")
