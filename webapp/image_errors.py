"""The error raised for an upload that is not a usable radiograph."""

from components.image_files import UnreadableImageError

# The web app's name for the shared reading error: the message names the problem for the
# user and carries no patient data.
ImageError = UnreadableImageError
