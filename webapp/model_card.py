"""Reads the model card the pipeline's pusher writes beside each pushed model.

Layout: ``<model_base_path>/<version>/assets.extra/model_card.json`` with keys
``model_name``, ``version``, ``pushed_at``, ``metrics``, ``training_history``,
``lineage``, ``thresholds``, ``decision`` (how the grade is computed) and ``heatmap``
(the class activation map the model serves); see docs/webapp.md.
"""

import json
import logging
import os
import threading
from typing import Optional, Sequence

from components import features
from webapp.models import Prediction

logger = logging.getLogger(__name__)



class ModelCardError(ValueError):
    """A model card exists but cannot be read or does not follow the schema."""


_cache_lock = threading.Lock()
# path -> (mtime_ns, size, card); cards are re-read only when the file changes.
_cache: dict = {}


def card_path(model_base_path: str, version: int) -> str:
    """Returns where the card of ``version`` lives."""
    return features.model_card_path(os.path.join(model_base_path, str(int(version))))


def _check_schema(card: dict, path: str) -> None:
    if not isinstance(card, dict):
        raise ModelCardError(f"{path}: top level must be a JSON object")
    metrics = card.get("metrics", {})
    if not isinstance(metrics, dict):
        raise ModelCardError(f"{path}: 'metrics' must be an object")
    matrix = metrics.get("confusion_matrix")
    if matrix is not None:
        if not (
            isinstance(matrix, list)
            and matrix
            and all(isinstance(row, list) and len(row) == len(matrix) for row in matrix)
        ):
            raise ModelCardError(f"{path}: 'metrics.confusion_matrix' must be a square list")
    history = card.get("training_history", {})
    if not isinstance(history, dict) or not all(
        isinstance(v, list) for v in history.values()
    ):
        raise ModelCardError(f"{path}: 'training_history' must map names to lists")
    for key in ("lineage", "thresholds", "decision", "heatmap"):
        if not isinstance(card.get(key, {}), dict):
            raise ModelCardError(f"{path}: '{key}' must be an object")
    _check_recorded_values(card, path)


def _check_recorded_values(card: dict, path: str) -> None:
    # Every prediction records these in VARCHAR columns. PostgreSQL refuses a longer value,
    # and the upload with it (SQLite would store it), so such a card is malformed.
    columns = Prediction.__table__.c
    lineage = card.get("lineage") or {}
    for name, value, column in (
        ("pushed_at", card.get("pushed_at"), columns.model_pushed_at),
        ("lineage.dvc_data_md5", lineage.get("dvc_data_md5"), columns.data_version),
        ("lineage.data_hash", lineage.get("data_hash"), columns.data_version),
        ("heatmap.method", (card.get("heatmap") or {}).get("method"), columns.heatmap_method),
    ):
        if value is not None and (not isinstance(value, str) or len(value) > column.type.length):
            raise ModelCardError(
                f"{path}: '{name}' must be a string of at most {column.type.length} characters")


def load_model_card(model_base_path: Optional[str], version: int) -> Optional[dict]:
    """Loads the card of one model version.

    Args:
        model_base_path: The served model's base path; None when not configured.
        version: The model version.

    Returns:
        The card, or None when no base path is configured or the version has no card.

    Raises:
        ModelCardError: if the card exists but is not valid JSON of the expected shape.
    """
    if not model_base_path:
        return None
    path = card_path(model_base_path, version)
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    key = (stat.st_mtime_ns, stat.st_size)
    with _cache_lock:
        cached = _cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
    try:
        with open(path, "r", encoding="utf-8") as f:
            card = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelCardError(f"{path}: cannot be read as JSON ({e})") from e
    _check_schema(card, path)
    with _cache_lock:
        _cache[path] = (key, card)
    return card


def load_model_card_or_none(model_base_path: Optional[str], version: int) -> Optional[dict]:
    """`load_model_card`, but an unreadable card is logged and treated as missing (for
    pages and records that stay valid without it)."""
    try:
        return load_model_card(model_base_path, version)
    except ModelCardError as e:
        logger.warning("model card unreadable for version %s: %s", version, e)
        return None


def trained_on_synthetic(card: Optional[dict]) -> bool:
    """Whether the card says the model was trained on the synthetic phantoms (lineage
    ``synthetic``, written by the pipeline); False when unknown."""
    return bool(card) and (card.get("lineage") or {}).get("synthetic") is True


def data_version(card: Optional[dict]) -> Optional[str]:
    """The DVC data hash the model was trained on (what history records as data version)."""
    if not card:
        return None
    lineage = card.get("lineage") or {}
    value = lineage.get("dvc_data_md5") or lineage.get("data_hash")
    return str(value) if value else None


def heatmap_method(card: Optional[dict]) -> Optional[str]:
    """The class activation map the card's model serves, as the card names it
    (``model.heatmap_method``: a key of ``components.features.HEATMAP_METHOD_NAMES``);
    None when the card does not say. A method this web app has no display name for is
    kept, and logged."""
    method = ((card or {}).get("heatmap") or {}).get("method")
    if method is not None and method not in features.HEATMAP_METHOD_NAMES:
        logger.warning("model card names a heatmap method this web app has no name for: %r",
                       method)
    return method


def served_version(statuses: Sequence) -> Optional[int]:
    """The version TF Serving answers unversioned requests with: the newest AVAILABLE one.

    Args:
        statuses: ``ModelVersionStatus`` items from ``ServingClient.model_status()``.
    """
    available = [s.version for s in statuses if s.state == "AVAILABLE"]
    return max(available) if available else None
