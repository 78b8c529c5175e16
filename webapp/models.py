"""Database tables of the web app (SQLAlchemy 2.0 declarative models).

The schema is owned by the Alembic migrations in ``webapp/migrations``; these
classes must match the latest revision (a test checks that they do).
"""

import datetime as dt
from typing import List, Optional

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from components.features import HEATMAP_METHOD_NAMES
from webapp.ood_reasons import OodReason
from webapp.ood_reasons import describe as describe_ood_reasons

ROLE_CLINICIAN = "clinician"
ROLE_ADMIN = "admin"
ROLES = (ROLE_CLINICIAN, ROLE_ADMIN)

STATUS_DONE = "done"
# The model server could not be reached or failed; the image is kept for a retry.
STATUS_FAILED = "failed"
STATUSES = (STATUS_DONE, STATUS_FAILED)

# The knee's side, as DICOM writes laterality (PS3.3 C.7.3.1: L, R).
SIDE_LEFT = "L"
SIDE_RIGHT = "R"
SIDES = (SIDE_LEFT, SIDE_RIGHT)
SIDE_NAMES = {SIDE_LEFT: "left", SIDE_RIGHT: "right"}
# Where a recorded side came from.
SIDE_FROM_DICOM = "dicom"
SIDE_FROM_USER = "user"

STUDY_REFERENCE_MAX_LENGTH = 64
HEATMAP_METHOD_MAX_LENGTH = 16

MIN_PASSWORD_LENGTH = 12


def heatmap_display_name(method: Optional[str]) -> str:
    """A heatmap method (``model.heatmap_method``) as users know it ("Grad-CAM",
    "LayerCAM", ...): the key itself when it has no such name, "Heatmap" when unknown."""
    if not method:
        return "Heatmap"
    return HEATMAP_METHOD_NAMES.get(method, method)


def utcnow() -> dt.datetime:
    """Returns the current time as a naive UTC datetime (what the DB columns hold)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class User(Base):
    """A person who can sign in: a clinician, or an admin who also manages users."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(80), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    role: Mapped[str] = mapped_column(sa.String(20))
    active: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime, default=utcnow)

    tokens: Mapped[List["ApiToken"]] = relationship(back_populates="user")

    # The sign-in this object was loaded for (webapp/sessions.py); not a column.
    session_token = None  # type: Optional[str]

    # Flask-Login's user protocol.
    @property
    def is_active(self) -> bool:
        return bool(self.active)

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_id(self) -> str:
        # "<id>:<token>" ties the browser's session to one revocable sign-in.
        return f"{self.id}:{self.session_token}" if self.session_token else str(self.id)

    @property
    def is_admin(self) -> bool:
        return self.role == ROLE_ADMIN

    def set_password(self, password: str) -> None:
        """Stores a salted hash of ``password``.

        Raises:
            ValueError: if the password is shorter than MIN_PASSWORD_LENGTH.
        """
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ValueError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)


class UserSession(Base):
    """One sign-in: the browser's session holds a random token, this row its SHA-256.
    A revoked row ends the sign-in wherever its cookie is (webapp/sessions.py)."""

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime, default=utcnow)
    revoked_at: Mapped[Optional[dt.datetime]] = mapped_column(sa.DateTime, nullable=True)

    user: Mapped[User] = relationship()


class ApiToken(Base):
    """A bearer token for the JSON API; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(80))
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    prefix: Mapped[str] = mapped_column(sa.String(12))
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime, default=utcnow)
    last_used_at: Mapped[Optional[dt.datetime]] = mapped_column(sa.DateTime, nullable=True)
    revoked_at: Mapped[Optional[dt.datetime]] = mapped_column(sa.DateTime, nullable=True)

    user: Mapped[User] = relationship(back_populates="tokens")


class Prediction(Base):
    """One graded (or failed, retryable) upload of one radiograph."""

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime, default=utcnow, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(sa.DateTime, default=utcnow)
    status: Mapped[str] = mapped_column(sa.String(16), index=True)
    error: Mapped[Optional[str]] = mapped_column(sa.Text, nullable=True)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=1)
    # Shown to the user to recognise the study; never used as a path.
    original_filename: Mapped[str] = mapped_column(sa.String(255))
    source_format: Mapped[str] = mapped_column(sa.String(16))
    image_width: Mapped[int] = mapped_column(sa.Integer)
    image_height: Mapped[int] = mapped_column(sa.Integer)
    thumbnail_png: Mapped[bytes] = mapped_column(sa.LargeBinary)
    grade: Mapped[Optional[int]] = mapped_column(sa.Integer, nullable=True, index=True)
    grade_name: Mapped[Optional[str]] = mapped_column(sa.String(32), nullable=True)
    probabilities: Mapped[Optional[list]] = mapped_column(sa.JSON, nullable=True)
    expected_grade: Mapped[Optional[float]] = mapped_column(sa.Float, nullable=True)
    confidence: Mapped[Optional[float]] = mapped_column(sa.Float, nullable=True)
    model_name: Mapped[Optional[str]] = mapped_column(sa.String(80), nullable=True)
    model_version: Mapped[Optional[int]] = mapped_column(sa.BigInteger, nullable=True)
    model_pushed_at: Mapped[Optional[str]] = mapped_column(sa.String(40), nullable=True)
    data_version: Mapped[Optional[str]] = mapped_column(sa.String(80), nullable=True)
    # The class activation map the model served with the heatmap (a key of
    # components.features.HEATMAP_METHOD_NAMES, from its card); NULL without a heatmap,
    # for a card that does not say, and for rows graded before migration 0006.
    heatmap_method: Mapped[Optional[str]] = mapped_column(
        sa.String(HEATMAP_METHOD_MAX_LENGTH), nullable=True)
    # The model's out-of-distribution check; NULL when the model had none.
    out_of_distribution: Mapped[Optional[bool]] = mapped_column(sa.Boolean, nullable=True)
    ood_score: Mapped[Optional[float]] = mapped_column(sa.Float, nullable=True)
    # Why the model flagged it: the codes of its failed input checks joined by ","
    # (components.features.OOD_REASONS). NULL when it gave none: not flagged, a model
    # without the reason output, or a row graded before migration 0005.
    ood_reason: Mapped[Optional[str]] = mapped_column(sa.Text, nullable=True)
    # The knee's side, L or R (NULL only for rows graded before sides were recorded).
    side: Mapped[Optional[str]] = mapped_column(sa.String(1), nullable=True, index=True)
    # "dicom" (the file's laterality attribute) or "user" (chosen at upload).
    side_source: Mapped[Optional[str]] = mapped_column(sa.String(8), nullable=True)
    # What the user chose, kept when the file's attribute overrode it (shown as a warning).
    side_chosen: Mapped[Optional[str]] = mapped_column(sa.String(1), nullable=True)
    # Identifying data the user chose to type (accession or local study number);
    # prior films are matched on it and the side.
    study_reference: Mapped[Optional[str]] = mapped_column(
        sa.String(STUDY_REFERENCE_MAX_LENGTH), nullable=True, index=True
    )

    user: Mapped[User] = relationship()
    image: Mapped["PredictionImage"] = relationship(
        back_populates="prediction", cascade="all, delete-orphan", uselist=False
    )

    @property
    def is_done(self) -> bool:
        return self.status == STATUS_DONE

    @property
    def is_flagged(self) -> bool:
        """The model flagged the image as out-of-distribution: its grade must not be shown."""
        return self.is_done and bool(self.out_of_distribution)

    @property
    def is_graded(self) -> bool:
        """A grade exists and may be presented as a result."""
        return self.is_done and not self.out_of_distribution

    @property
    def ood_reasons(self) -> List[OodReason]:
        """Why the model flagged the image, one entry per failed check ([] when not
        recorded)."""
        return describe_ood_reasons(self.ood_reason)

    @property
    def heatmap_name(self) -> str:
        """`heatmap_display_name` of the recorded method."""
        return heatmap_display_name(self.heatmap_method)

    @property
    def side_name(self) -> Optional[str]:
        """"left", "right", or None for rows graded before sides were recorded."""
        return SIDE_NAMES.get(self.side or "")

    @property
    def side_overridden(self) -> bool:
        """The file's laterality attribute contradicted the side the user chose."""
        return bool(self.side_chosen) and self.side_chosen != self.side


class PredictionImage(Base):
    """The large blobs of a prediction, kept apart so history pages stay light."""

    __tablename__ = "prediction_images"

    prediction_id: Mapped[int] = mapped_column(
        sa.ForeignKey("predictions.id", ondelete="CASCADE"), primary_key=True
    )
    # Exactly the PNG bytes sent to the model server (kept for retries and display).
    image_png: Mapped[bytes] = mapped_column(sa.LargeBinary)
    # The heatmap (Prediction.heatmap_method) as an RGBA PNG at the model's heatmap
    # resolution.
    heatmap_png: Mapped[Optional[bytes]] = mapped_column(sa.LargeBinary, nullable=True)

    prediction: Mapped[Prediction] = relationship(back_populates="image")


class LoginAttempt(Base):
    """A sign-in attempt, kept to rate-limit guessing across processes."""

    __tablename__ = "login_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(80), index=True)
    remote_addr: Mapped[str] = mapped_column(sa.String(64), index=True)
    success: Mapped[bool] = mapped_column(sa.Boolean)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime, default=utcnow, index=True)
