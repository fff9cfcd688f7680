"""The one error type of aipg.models."""


class ModelError(Exception):
    """A model, its files or a job's parameters are unusable; the message says what and why.

    Raised before any long work starts wherever the problem can be seen up front (a bad
    hash, a lying manifest, a prompt over the context length, absurd parameters).
    """
