"""Why the model refused to grade a film, in the words clinicians read.

The model's ``ood_reason`` output holds the codes of its failed input checks joined by
"," (``components.features.OOD_REASONS``; docs/serving.md has the table). Each code gets
a short label (History, earlier films) and one sentence saying what is wrong with the
film and, where the user can fix it, what to do.
"""

import dataclasses
from typing import Dict, List, Optional, Tuple

from components import features

# (short label, one sentence) per code of features.OOD_REASONS.
_WORDS: Dict[str, Tuple[str, str]] = {
    features.REASON_BLANK: (
        "blank image",
        "The image is blank: it shows no film content.",
    ),
    features.REASON_COLOUR: (
        "colour picture",
        "It is a colour picture, not a grey-scale radiograph.",
    ),
    features.REASON_TOO_SMALL: (
        "smaller than the minimum size",
        "The image is smaller than the minimum size the model grades, like a thumbnail: "
        "upload the full-resolution film.",
    ),
    features.REASON_INVERTED: (
        "film looks inverted",
        "The film looks inverted (white background, dark bones): export it with the "
        "correct polarity and upload it again.",
    ),
    features.REASON_ROTATED: (
        "rotated or upside down",
        "The film is rotated (the leg lies across the image) or upside down: turn it "
        "upright and upload it again.",
    ),
    features.REASON_UNLIKE_TRAINING: (
        "unlike the training films",
        "It is unlike the films the model was trained on (for example not a knee, or both "
        "knees or the whole leg on one film).",
    ),
}

# A code from a model newer than this app is shown as sent, cut to this length.
_MAX_UNKNOWN_CODE_LENGTH = 40


@dataclasses.dataclass(frozen=True)
class OodReason:
    """One failed input check of the model.

    Attributes:
        code: the model's code, e.g. "inverted".
        label: a few words, e.g. "film looks inverted".
        text: one sentence for the clinician.
        known: whether this app knows the code (False for codes of newer models).
    """

    code: str
    label: str
    text: str
    known: bool = True


def codes(stored: Optional[str]) -> List[str]:
    """The codes in an ``ood_reason`` value, in its order, without blanks or repeats.

    Args:
        stored: the model's output as stored, e.g. "inverted,rotated"; None or "" for none.
    """
    found: List[str] = []
    for code in (stored or "").split(","):
        code = code.strip()
        if code and code not in found:
            found.append(code)
    return found


def unknown_codes(stored: Optional[str]) -> List[str]:
    """The codes in ``stored`` that are not in components.features.OOD_REASONS."""
    return [code for code in codes(stored) if code not in _WORDS]


def describe(stored: Optional[str]) -> List[OodReason]:
    """The reasons in an ``ood_reason`` value, one per code ([] for None or "").

    A code this app does not know (a newer model) still gets a sentence, naming the code.
    """
    reasons = []
    for code in codes(stored):
        if code in _WORDS:
            label, text = _WORDS[code]
            reasons.append(OodReason(code, label, text))
        else:
            shown = code[:_MAX_UNKNOWN_CODE_LENGTH]
            reasons.append(OodReason(
                code, f"failed check '{shown}'",
                f"The model's check '{shown}' failed (a check this version of the web app "
                "cannot describe).", known=False))
    return reasons
