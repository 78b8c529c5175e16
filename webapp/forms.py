"""Flask-WTF forms; every form carries a CSRF token."""

from flask_wtf import FlaskForm
from flask_wtf.file import MultipleFileField
from wtforms import PasswordField, RadioField, SelectField, StringField
from wtforms.validators import DataRequired, EqualTo, Length, Regexp

from webapp.models import MIN_PASSWORD_LENGTH, ROLES, STUDY_REFERENCE_MAX_LENGTH

USERNAME_PATTERN = r"^[A-Za-z0-9_.@-]+$"


class LoginForm(FlaskForm):
    """Username and password."""

    username = StringField("Username", validators=[DataRequired(), Length(max=80)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])


class UploadForm(FlaskForm):
    """One or more radiographs (PNG, JPEG or DICOM), the batch's side and study reference.

    Only the CSRF token is validated here; the side and reference are checked by
    webapp.grading for the pages and the API alike (one rule, one message).
    """

    files = MultipleFileField("Radiographs")
    side = RadioField(
        "Knee side",
        choices=[("L", "Left"), ("R", "Right"), ("", "Choose per file")],
        default="",
        validate_choice=False,
    )
    study_reference = StringField(
        "Study reference (optional)", render_kw={"maxlength": STUDY_REFERENCE_MAX_LENGTH}
    )


class ConfirmForm(FlaskForm):
    """A button-only form (retry, revoke, deactivate): just the CSRF token."""


class UserForm(FlaskForm):
    """An admin creating an account."""

    username = StringField(
        "Username",
        validators=[
            DataRequired(),
            Length(max=80),
            Regexp(USERNAME_PATTERN, message="letters, digits and _ . @ - only"),
        ],
    )
    password = PasswordField(
        "Initial password", validators=[DataRequired(), Length(min=MIN_PASSWORD_LENGTH, max=256)]
    )
    role = SelectField("Role", choices=[(r, r) for r in ROLES])


class PasswordForm(FlaskForm):
    """A user changing their own password."""

    current = PasswordField("Current password", validators=[DataRequired()])
    new = PasswordField(
        "New password", validators=[DataRequired(), Length(min=MIN_PASSWORD_LENGTH, max=256)]
    )
    repeat = PasswordField(
        "Repeat new password", validators=[EqualTo("new", message="passwords differ")]
    )


class TokenForm(FlaskForm):
    """A user creating an API token."""

    name = StringField("Token name", validators=[DataRequired(), Length(max=80)])
