"""The one error type of the wire layer."""


class WireError(ValueError):
    """Bytes or values that are not a valid wire message.

    ``record`` and ``field`` name where the problem is (``"Receipt"``, ``"output_hash"``)
    when it is known, so a log line says which part of which message was wrong.
    """

    def __init__(self, message: str, *, record: str | None = None, field: str | None = None):
        self.record = record
        self.field = field
        self.reason = message
        where = ".".join(p for p in (record, field) if p)
        super().__init__(f"{where}: {message}" if where else message)
