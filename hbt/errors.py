"""The errors hbt raises for bad input; the CLI prints them as one line and exits with code 2."""


class HbtError(Exception):
    """A user-facing error: the message says what was wrong, where, and what to do."""

    exit_code = 2


class SourceError(HbtError):
    """An encoder source (model id, directory or checkpoint) that cannot be loaded."""


class BundleError(HbtError):
    """A bundle that is missing, corrupted, or from an unsupported format version."""


class FidelityError(HbtError):
    """An exported model whose embeddings drift too far from the PyTorch model's."""


class DataError(HbtError):
    """Malformed input data: the message names the file and line."""


class SearchIndexError(HbtError):
    """An index directory that is missing, corrupted or inconsistent."""
