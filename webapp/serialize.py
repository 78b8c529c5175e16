"""JSON and CSV shapes of a prediction (shared by the API, the upload script and exports)."""

from typing import Iterable, List

from flask import url_for

from components.features import GRADE_NAMES
from webapp.models import Prediction

# Shown instead of the grade when the model flags the image as out-of-distribution.
NOT_GRADED_MESSAGE = (
    "Not graded: this image does not look like a knee radiograph the model was trained on"
)

CSV_COLUMNS = (
    ["id", "created_at", "user", "file", "format", "study_reference", "side", "side_source"]
    + ["side_chosen", "status", "grade", "grade_name"]
    + [f"p_{name.lower()}" for name in GRADE_NAMES]
    + ["expected_grade", "confidence", "model_name", "model_version", "model_pushed_at"]
    + ["data_version", "attempts", "error", "out_of_distribution", "ood_score", "ood_reason"]
)


def not_graded_text(prediction: Prediction) -> str:
    """What is said instead of a flagged image's grade: NOT_GRADED_MESSAGE, followed by
    one sentence per reason the model gave (none for rows without a recorded reason)."""
    sentences = [reason.text for reason in prediction.ood_reasons]
    return " ".join([NOT_GRADED_MESSAGE + "."] + sentences) if sentences else NOT_GRADED_MESSAGE


def prediction_json(prediction: Prediction) -> dict:
    """The API's representation of one prediction."""
    body = {
        "id": prediction.id,
        "status": prediction.status,
        "created_at": prediction.created_at.isoformat() + "Z",
        "user": prediction.user.username,
        "file": prediction.original_filename,
        "format": prediction.source_format,
        # The identifying reference the user typed (null when none).
        "study_reference": prediction.study_reference,
        "side": prediction.side,
        "side_source": prediction.side_source,
        # Set when the file's laterality attribute overrode the user's choice.
        "side_chosen": prediction.side_chosen if prediction.side_overridden else None,
        "width": prediction.image_width,
        "height": prediction.image_height,
        "attempts": prediction.attempts,
        "result_url": url_for("predict.result", prediction_id=prediction.id),
    }
    if prediction.is_done:
        body.update(
            graded=prediction.is_graded,
            out_of_distribution=prediction.out_of_distribution,
            ood_score=prediction.ood_score,
            # Why the model flagged it; [] when not flagged or no reason was recorded.
            ood_reasons=[
                {"code": reason.code, "text": reason.text} for reason in prediction.ood_reasons
            ],
            model={
                "name": prediction.model_name,
                "version": prediction.model_version,
                "pushed_at": prediction.model_pushed_at,
                "data_version": prediction.data_version,
            },
            # The map behind the heatmap overlay (null: none computed, or not recorded).
            heatmap_method=prediction.heatmap_method,
        )
        if prediction.is_graded:
            body.update(
                grade=prediction.grade,
                grade_name=prediction.grade_name,
                probabilities=list(prediction.probabilities),
                grade_names=list(GRADE_NAMES),
                expected_grade=prediction.expected_grade,
                confidence=prediction.confidence,
            )
        else:
            # The model flagged the image: its grade is kept in the database for
            # audit but never handed out as a result.
            body["not_graded_reason"] = not_graded_text(prediction)
    else:
        body.update(
            error=prediction.error,
            retry_url=url_for("predict.retry", prediction_id=prediction.id),
        )
    return body


def _csv_safe(value):
    """Spreadsheet programs run cells starting with = + - @ as formulas; defuse them."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def prediction_csv_rows(predictions: Iterable[Prediction]) -> Iterable[List]:
    """CSV rows (matching CSV_COLUMNS) for ``predictions``."""
    for p in predictions:
        # A flagged image's grade is not a result: leave its grade columns empty.
        graded = not p.is_flagged
        probs = list(p.probabilities) if p.probabilities and graded else [None] * len(GRADE_NAMES)
        row = [
            p.id,
            p.created_at.isoformat(timespec="seconds") + "Z",
            p.user.username,
            p.original_filename,
            p.source_format,
            p.study_reference,
            p.side,
            p.side_source,
            p.side_chosen if p.side_overridden else None,
            p.status,
            p.grade if graded else None,
            p.grade_name if graded else None,
            *[None if v is None else round(float(v), 6) for v in probs],
            None if p.expected_grade is None or not graded else round(p.expected_grade, 4),
            None if p.confidence is None or not graded else round(p.confidence, 6),
            p.model_name,
            p.model_version,
            p.model_pushed_at,
            p.data_version,
            p.attempts,
            p.error,
            p.out_of_distribution,
            None if p.ood_score is None else round(p.ood_score, 4),
            p.ood_reason,
        ]
        yield [_csv_safe(v) for v in row]
