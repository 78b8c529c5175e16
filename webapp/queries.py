"""Prediction look-ups shared by the pages and the API (who may see what, search)."""

import dataclasses
import datetime as dt
from typing import Optional

import sqlalchemy as sa
from sqlalchemy.orm import Session
from werkzeug.exceptions import Forbidden, NotFound

from webapp.models import SIDES, STATUS_DONE, STATUSES, Prediction, User
from webapp.row_ids import ascii_int, parse_row_id


class SearchError(ValueError):
    """A history filter value is malformed (a 400 naming the parameter)."""


@dataclasses.dataclass(frozen=True)
class HistoryFilter:
    """History search parameters (all optional)."""

    text: str = ""
    grade: Optional[int] = None
    status: Optional[str] = None
    username: str = ""
    date_from: Optional[dt.date] = None
    date_to: Optional[dt.date] = None
    side: Optional[str] = None

    def as_args(self) -> dict:
        """The filter as query-string arguments (for pagination and CSV links)."""
        args = {
            "q": self.text,
            "grade": "" if self.grade is None else str(self.grade),
            "status": self.status or "",
            "user": self.username,
            "from": self.date_from.isoformat() if self.date_from else "",
            "to": self.date_to.isoformat() if self.date_to else "",
            "side": self.side or "",
        }
        return {k: v for k, v in args.items() if v}


def _parse_date(args, key: str) -> Optional[dt.date]:
    raw = (args.get(key) or "").strip()
    if not raw:
        return None
    try:
        return dt.date.fromisoformat(raw)
    except ValueError as e:
        raise SearchError(f"'{key}' must be a date like 2024-05-31, got {raw!r}") from e


def parse_filter(args) -> HistoryFilter:
    """Builds a filter from request arguments.

    Raises:
        SearchError: naming the malformed parameter.
    """
    grade_raw = (args.get("grade") or "").strip()
    grade = None
    if grade_raw:
        if ascii_int(grade_raw) is None or not 0 <= int(grade_raw) <= 4:
            raise SearchError(f"'grade' must be 0 to 4, got {grade_raw!r}")
        grade = int(grade_raw)
    status = (args.get("status") or "").strip() or None
    if status is not None and status not in STATUSES:
        raise SearchError(f"'status' must be one of {', '.join(STATUSES)}, got {status!r}")
    side = (args.get("side") or "").strip().upper() or None
    if side is not None and side not in SIDES:
        raise SearchError(f"'side' must be L or R, got {side[:20]!r}")
    return HistoryFilter(
        side=side,
        text=(args.get("q") or "").strip()[:200],
        grade=grade,
        status=status,
        username=(args.get("user") or "").strip()[:80],
        date_from=_parse_date(args, "from"),
        date_to=_parse_date(args, "to"),
    )


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def history_query(user: User, flt: HistoryFilter) -> sa.Select:
    """Predictions ``user`` may see that match ``flt``, newest first.

    Clinicians see their own; admins see everyone's and may filter by user.
    """
    query = sa.select(Prediction).join(User, Prediction.user_id == User.id)
    if not user.is_admin:
        query = query.where(Prediction.user_id == user.id)
    elif flt.username:
        query = query.where(User.username == flt.username)
    if flt.text:
        pattern = f"%{_escape_like(flt.text)}%"
        conditions = [
            Prediction.original_filename.ilike(pattern, escape="\\"),
            Prediction.study_reference.ilike(pattern, escape="\\"),
        ]
        row_id = parse_row_id(flt.text.lstrip("#"))
        if row_id is not None:
            conditions.append(Prediction.id == row_id)
        query = query.where(sa.or_(*conditions))
    if flt.grade is not None:
        # A flagged image's grade is not a result, so it never matches a grade filter.
        query = query.where(
            Prediction.grade == flt.grade, Prediction.out_of_distribution.is_not(True)
        )
    if flt.status:
        query = query.where(Prediction.status == flt.status)
    if flt.side:
        query = query.where(Prediction.side == flt.side)
    if flt.date_from:
        query = query.where(Prediction.created_at >= dt.datetime.combine(flt.date_from, dt.time()))
    if flt.date_to:
        end = dt.datetime.combine(flt.date_to + dt.timedelta(days=1), dt.time())
        query = query.where(Prediction.created_at < end)
    return query.order_by(Prediction.created_at.desc(), Prediction.id.desc())


@dataclasses.dataclass(frozen=True)
class Page:
    """One page of results."""

    items: list
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    @property
    def has_prev(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page < self.pages


def paginate(session: Session, query: sa.Select, page: int, per_page: int) -> Page:
    """Runs ``query`` for one page (page numbers start at 1)."""
    total = session.scalar(sa.select(sa.func.count()).select_from(query.order_by(None).subquery()))
    page = max(1, page)
    items = list(session.scalars(query.limit(per_page).offset((page - 1) * per_page)))
    return Page(items=items, page=page, per_page=per_page, total=total)


# Pages beyond this hold nothing anyone will read; the limit keeps the offset in 64 bits.
MAX_PAGE = 10**9


def page_number(args, key: str = "page") -> int:
    """Parses a page number argument.

    Raises:
        SearchError: if it is not a positive integer.
    """
    raw = (args.get(key) or "1").strip()
    value = ascii_int(raw)
    if value is None or value < 1:
        raise SearchError(f"'{key}' must be a positive integer, got {raw!r}")
    if value > MAX_PAGE:
        raise SearchError(f"'{key}' must be at most {MAX_PAGE}, got {raw!r}")
    return value


def get_visible_prediction(session: Session, user: User, prediction_id: int) -> Prediction:
    """Loads a prediction the user may see.

    Raises:
        NotFound (404): no such prediction.
        Forbidden (403): it belongs to another user and ``user`` is not an admin.
    """
    prediction = session.get(Prediction, prediction_id)
    if prediction is None:
        raise NotFound(f"Prediction {prediction_id} does not exist.")
    if prediction.user_id != user.id and not user.is_admin:
        raise Forbidden("This prediction belongs to another user.")
    return prediction


# Enough films to see a knee's course over years of follow-up on one screen.
PRIOR_FILMS_LIMIT = 12


def prior_films(
    session: Session, user: User, prediction: Prediction, limit: int = PRIOR_FILMS_LIMIT
) -> list:
    """Earlier graded or checked films of the same study reference and side, newest first.

    Only films ``user`` may see (their own; everyone's for an admin); failed uploads
    (never graded) are left out. Empty when the prediction has no reference or side.

    Returns:
        Up to ``limit`` Prediction rows created before ``prediction``.
    """
    if not prediction.study_reference or not prediction.side:
        return []
    query = sa.select(Prediction).where(
        Prediction.study_reference == prediction.study_reference,
        Prediction.side == prediction.side,
        Prediction.status == STATUS_DONE,
        Prediction.id != prediction.id,
        sa.or_(
            Prediction.created_at < prediction.created_at,
            sa.and_(
                Prediction.created_at == prediction.created_at, Prediction.id < prediction.id
            ),
        ),
    )
    if not user.is_admin:
        query = query.where(Prediction.user_id == user.id)
    query = query.order_by(Prediction.created_at.desc(), Prediction.id.desc()).limit(limit)
    return list(session.scalars(query))
