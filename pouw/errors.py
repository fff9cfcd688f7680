"""The one error type of the pouw layer."""


class PouwError(ValueError):
    """A job, receipt, verdict, certificate or piece of fraud evidence that is not valid.

    ``what`` names the check that failed (``"receipt.signature"``, ``"quorum"``), so a
    log line, a verdict reason or a block rejection says exactly which rule was broken.
    """

    def __init__(self, what: str, message: str):
        self.what = what
        self.reason = message
        super().__init__(f"{what}: {message}")
