"""Grades an uploaded radiograph through the model server and records the result.

Shared by the HTML views and the JSON API. Order of work, so that nothing is
half-stored: validate and convert the file (a bad file stores nothing), call the
model server, then write the prediction and its images in one transaction —
as ``done``, or as ``failed`` with the image kept so it can be retried.
"""

import hashlib
import logging
import re
from typing import Optional, Tuple

from flask import current_app
from sqlalchemy.orm import Session

from components.features import GRADE_NAMES
from serving.client import InvalidInputError, ServingError
from webapp import heatmap, images, model_card, ood_reasons, serving_gateway
from webapp.models import (
    SIDE_FROM_DICOM,
    SIDE_FROM_USER,
    SIDE_NAMES,
    SIDES,
    STATUS_DONE,
    STATUS_FAILED,
    STUDY_REFERENCE_MAX_LENGTH,
    Prediction,
    PredictionImage,
    User,
    utcnow,
)

logger = logging.getLogger(__name__)

MAX_FILENAME_LENGTH = 255


class ModelRejectedImageError(ValueError):
    """The model server refused the image as invalid input (a client error, 400)."""


class UploadDetailsError(ValueError):
    """The side or study reference sent with an upload is missing or malformed (a 400).

    Attributes:
        field: "side" or "study_reference", the form field to correct.
    """

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# Letters, digits, and the separators accession and study numbers use; starting with a
# letter or digit also keeps a spreadsheet from reading it as a formula.
_STUDY_REFERENCE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._/-]*")
STUDY_REFERENCE_RULE = (
    f"at most {STUDY_REFERENCE_MAX_LENGTH} characters: letters, digits, spaces and . _ / - "
    "(starting with a letter or digit)"
)
_SIDE_WORDS = {"l": "L", "left": "L", "r": "R", "right": "R"}


def parse_side(raw: Optional[str]) -> Optional[str]:
    """The side chosen at upload as "L" or "R"; None when none was chosen.

    Accepts L, R, left or right in any case.

    Raises:
        UploadDetailsError: for any other value.
    """
    text = (raw or "").strip()
    if not text:
        return None
    side = _SIDE_WORDS.get(text.lower())
    if side is None:
        raise UploadDetailsError("side", f"the side must be L (left) or R (right), got {text[:20]!r}")
    return side


def parse_study_reference(raw: Optional[str]) -> Optional[str]:
    """The study reference as stored: trimmed, inner spaces collapsed, in capitals (so
    "ab 12" and "AB 12" find the same prior films); None when empty.

    Raises:
        UploadDetailsError: too long, or characters outside STUDY_REFERENCE_RULE.
    """
    text = " ".join((raw or "").split()).upper()
    if not text:
        return None
    if len(text) > STUDY_REFERENCE_MAX_LENGTH:
        raise UploadDetailsError(
            "study_reference",
            f"the study reference has {len(text)} characters; it may have {STUDY_REFERENCE_RULE}",
        )
    if not _STUDY_REFERENCE_RE.fullmatch(text):
        raise UploadDetailsError(
            "study_reference", f"the study reference may have {STUDY_REFERENCE_RULE}"
        )
    return text


def resolve_side(file_laterality: Optional[str], chosen: Optional[str]) -> Tuple[str, str]:
    """The side to record and where it came from ("dicom" or "user").

    The file's attribute wins over the choice: it is written at acquisition with the
    film's side marker, while a batch default is the likelier slip. The choice is kept
    by the caller so a contradiction is shown, never hidden.

    Args:
        file_laterality: What the file records: "L", "R", "B" (both), or None.
        chosen: The side chosen at upload, "L", "R" or None.

    Raises:
        UploadDetailsError: the file records both knees, or records no side and none
            was chosen.
    """
    if file_laterality in SIDES:
        return file_laterality, SIDE_FROM_DICOM
    if file_laterality == "B":
        raise UploadDetailsError(
            "side",
            "the DICOM file records both knees (laterality B); the model grades one knee "
            "per film, so upload each knee's film separately",
        )
    if chosen is None:
        raise UploadDetailsError(
            "side", "choose the knee's side (left or right): the file does not record it"
        )
    return chosen, SIDE_FROM_USER


def stored_name(filename: str, source_format: str, data: bytes) -> str:
    """What is recorded as an upload's name: with KOA_KEEP_FILE_NAMES the file's base name,
    otherwise (the default) its format and the start of its SHA-256, e.g.
    ``dicom-3fa2c1b0d9`` — PACS exports name files after the patient."""
    if current_app.config.get("KOA_KEEP_FILE_NAMES"):
        return display_filename(filename)
    return f"{source_format}-{hashlib.sha256(data).hexdigest()[:10]}"


def display_filename(filename: str) -> str:
    """The upload's base name, for display only (never used as a path).

    Browsers may send a full client path; only its last component is kept and
    control characters are dropped.
    """
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return (name or "upload")[:MAX_FILENAME_LENGTH]


def _apply_result(prediction: Prediction, image_row: PredictionImage, result) -> None:
    # The grade is still valid without its card.
    card = model_card.load_model_card_or_none(
        current_app.config["KOA_MODEL_BASE_PATH"], result.model_version
    )
    prediction.status = STATUS_DONE
    prediction.error = None
    prediction.grade = int(result.grade)
    prediction.grade_name = GRADE_NAMES[int(result.grade)]
    prediction.probabilities = [float(p) for p in result.probabilities]
    prediction.expected_grade = float(result.expected_grade)
    prediction.confidence = float(result.confidence)
    prediction.model_name = result.model_name
    prediction.model_version = int(result.model_version)
    prediction.model_pushed_at = (card or {}).get("pushed_at")
    prediction.data_version = model_card.data_version(card)
    # A model without the check gives False and no score (stored as NULL).
    prediction.out_of_distribution = bool(result.out_of_distribution)
    prediction.ood_score = None if result.ood_score is None else float(result.ood_score)
    # "" (nothing failed, or a model without the reason output) is stored as NULL.
    prediction.ood_reason = ",".join(ood_reasons.codes(result.ood_reason)) or None
    unknown = ood_reasons.unknown_codes(prediction.ood_reason)
    if unknown:
        logger.warning("model %s v%s gave reason codes this web app cannot describe: %s",
                       result.model_name, result.model_version, ", ".join(unknown))
    image_row.heatmap_png = (
        heatmap.overlay_png(result.heatmap) if result.heatmap is not None else None
    )
    prediction.heatmap_method = (
        model_card.heatmap_method(card) if result.heatmap is not None else None
    )


def _call_model(prediction: Prediction, image_row: PredictionImage, explain: bool) -> None:
    """Runs the model; on a server failure marks the prediction failed (retryable).

    Raises:
        ModelRejectedImageError: if the server says the image itself is invalid.
    """
    try:
        result = serving_gateway.get_client().predict(image_row.image_png, explain=explain)
    except InvalidInputError as e:
        raise ModelRejectedImageError(f"the model server could not read the image: {e}") from e
    except ServingError as e:
        logger.warning("model server failed for prediction of user %s: %s", prediction.user_id, e)
        prediction.status = STATUS_FAILED
        prediction.error = f"{type(e).__name__}: {e}"[:2000]
        return
    _apply_result(prediction, image_row, result)


def grade_upload(
    session: Session,
    user: User,
    filename: str,
    data: bytes,
    *,
    side: Optional[str] = None,
    study_reference: Optional[str] = None,
    explain: bool = True,
) -> Prediction:
    """Validates, grades and stores one upload.

    Args:
        session: The request's database session.
        user: Who uploaded.
        filename: The name the browser sent (display only).
        data: The file's bytes.
        side: The side chosen at upload as sent (L, R, left, right; None or "" for
            none); a DICOM laterality attribute overrides it (see resolve_side).
        study_reference: The reference the user typed, as sent (None or "" for none).
        explain: Ask the server for the heatmap too (the method the model card names).

    Returns:
        The stored prediction, with status ``done`` or ``failed``.

    Raises:
        UploadDetailsError: the side or reference is malformed, or no side is known;
            nothing is stored.
        images.ImageError: the file is not a usable radiograph; nothing is stored.
        ModelRejectedImageError: the server refused the image; nothing is stored.
    """
    chosen_side = parse_side(side)
    reference = parse_study_reference(study_reference)
    prepared = images.prepare_upload(data, current_app.config["KOA_MAX_IMAGE_PIXELS"])
    # The decoder reads Image Laterality (0020,0062), else Laterality (0020,0060).
    recorded_side, side_source = resolve_side(prepared.laterality or None, chosen_side)
    now = utcnow()
    prediction = Prediction(
        user_id=user.id,
        created_at=now,
        updated_at=now,
        status=STATUS_FAILED,
        attempts=1,
        original_filename=stored_name(filename, prepared.source_format, data),
        source_format=prepared.source_format,
        image_width=prepared.width,
        image_height=prepared.height,
        thumbnail_png=prepared.thumbnail_png,
        side=recorded_side,
        side_source=side_source,
        side_chosen=chosen_side if side_source == SIDE_FROM_DICOM else None,
        study_reference=reference,
    )
    image_row = PredictionImage(image_png=prepared.png)
    prediction.image = image_row
    _call_model(prediction, image_row, explain)
    session.add(prediction)
    session.commit()
    # The study reference is identifying data: it stays out of the log.
    logger.info(
        "prediction %s by user %s: %s side=%s (%s) grade=%s out_of_distribution=%s "
        "ood_reason=%s",
        prediction.id,
        user.id,
        prediction.status,
        SIDE_NAMES[recorded_side],
        side_source,
        prediction.grade,
        prediction.out_of_distribution,
        prediction.ood_reason,
    )
    return prediction


def retry(session: Session, prediction: Prediction, *, explain: bool = True) -> Prediction:
    """Sends a failed prediction's kept image to the model server again.

    Returns:
        The same prediction, updated (``done``, or still ``failed``).

    Raises:
        ModelRejectedImageError: if the server refuses the image as invalid input;
            the record is left unchanged.
    """
    image_row = prediction.image
    prediction.attempts = (prediction.attempts or 0) + 1
    prediction.updated_at = utcnow()
    try:
        _call_model(prediction, image_row, explain)
    except ModelRejectedImageError:
        session.rollback()
        raise
    session.commit()
    logger.info("retry of prediction %s: %s", prediction.id, prediction.status)
    return prediction

