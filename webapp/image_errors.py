"""The error raised for an upload that is not a usable radiograph."""


class ImageError(ValueError):
    """The uploaded file cannot be graded; the message names the problem for the user."""
