"""Errors the CLI reports as one clear line (no traceback): each names the file/line/field and the fix."""


class WorkbenchError(Exception):
    """Base class for every error that is the user's to fix (bad recipe, bad data, missing model, busy run)."""


class DataError(WorkbenchError, ValueError):
    """Input data is malformed: the message names the file, the line (or row) and the field, and how to fix it."""
