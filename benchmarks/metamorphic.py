"""Benchmark: does a SavedModel grade a transformed film like the original, or flag it
with the right reason?

Each film is sent as itself and as the copies issue #11 found graded silently: polarity
inverted (a MONOCHROME1 film sent without inversion), turned by 90/180/270 degrees, 12- and
10-bit data in a 16-bit PNG, and 32/16/8 px thumbnails. A copy holds when it gets the
original's grade and flag, or is flagged with the reason expected for it (a turned or
inverted film may be put right instead, which also holds). The same table runs in the
tests on the small example models (tests/components/test_metamorphic.py).

    python benchmarks/metamorphic.py serving_model/koa/<version> [--films DIR] [--count 60]
        [--check-rates 500]

`--check-rates N` also measures the model-free input checks of the current code
(components/ood.py) on N original films and their inverted and turned copies: false-flag
and detection rate per check. Results go to benchmarks/results/metamorphic.json, keyed by
the model's directory.
"""

import argparse
import collections
import datetime
import io
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np
from PIL import Image

from components import features

features.select_keras_2()  # before TensorFlow is imported

logger = logging.getLogger("metamorphic")

DEFAULT_FILMS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / \
    "kneeKL224" / "train"

# Verdicts of one transformed copy.
HELD_SAME_GRADE = "same_grade"  # the original's grade and flag
HELD_RIGHT_REASON = "flagged_right_reason"
FLAGGED_WITHOUT_REASON = "flagged_no_reason_output"  # a model exported before ood_reason
FLAGGED_OTHER_REASON = "flagged_other_reason"
CHANGED_SILENTLY = "changed_silently"  # another grade or flag, without the expected reason
HELD = (HELD_SAME_GRADE, HELD_RIGHT_REASON)


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 or uint16 gray [H, W] -> PNG bytes (8- or 16-bit)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _bits(depth: int) -> Callable[[np.ndarray], bytes]:
    def stored(film: np.ndarray) -> bytes:
        full_scale = 2 ** depth - 1
        return encode_png(np.round(film.astype(np.float64) * full_scale / 255)
                          .astype(np.uint16))
    return stored


def _thumbnail(side: int) -> Callable[[np.ndarray], bytes]:
    def small(film: np.ndarray) -> bytes:
        height, width = film.shape
        scale = side / min(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return encode_png(np.asarray(Image.fromarray(film).resize(size, Image.LANCZOS)))
    return small


class Transform(NamedTuple):
    """One row of the table: how the copy is made, and the reason it must carry if flagged
    (None: it must keep the original's grade and flag)."""

    make: Callable[[np.ndarray], bytes]
    reason: Optional[str]


TRANSFORMS: Dict[str, Transform] = {
    "inverted": Transform(lambda f: encode_png(255 - f), features.REASON_INVERTED),
    "rotated_90": Transform(lambda f: encode_png(np.rot90(f, 1).copy()),
                            features.REASON_ROTATED),
    "rotated_180": Transform(lambda f: encode_png(np.rot90(f, 2).copy()),
                             features.REASON_ROTATED),
    "rotated_270": Transform(lambda f: encode_png(np.rot90(f, 3).copy()),
                             features.REASON_ROTATED),
    "12_bit_in_16_bit_png": Transform(_bits(12), None),
    "10_bit_in_16_bit_png": Transform(_bits(10), None),
    "thumbnail_32px": Transform(_thumbnail(32), features.REASON_TOO_SMALL),
    "thumbnail_16px": Transform(_thumbnail(16), features.REASON_TOO_SMALL),
    "thumbnail_8px": Transform(_thumbnail(8), features.REASON_TOO_SMALL),
}


def verdict(original: dict, copy: dict, expected_reason: Optional[str]) -> str:
    """How one transformed copy fared; see the HELD_* and other verdict constants.

    Args:
      original, copy: {"grade": int, "flagged": bool, "reason": str or None (no output)}.
      expected_reason: the reason code a flag of this copy must carry, or None.
    """
    if copy["grade"] == original["grade"] and copy["flagged"] == original["flagged"] and (
            not copy["flagged"] or copy["reason"] == original["reason"]):
        return HELD_SAME_GRADE
    if copy["flagged"] and copy["reason"] is None:
        return FLAGGED_WITHOUT_REASON
    if copy["flagged"] and expected_reason in copy["reason"].split(","):
        return HELD_RIGHT_REASON
    if copy["flagged"]:
        return FLAGGED_OTHER_REASON
    return CHANGED_SILENTLY


def load_films(folder: Path, count: int, seed: int = 0) -> Dict[str, np.ndarray]:
    """A seeded sample of `count` gray films (PNG/JPEG) under `folder`, any depth.

    Raises:
      FileNotFoundError: no image files under `folder`.
    """
    paths = sorted(p for p in Path(folder).rglob("*")
                   if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        raise FileNotFoundError(f"no PNG or JPEG films under {folder}")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(paths), min(count, len(paths)), replace=False))
    return {str(paths[i].relative_to(folder)): np.asarray(Image.open(paths[i]).convert("L"))
            for i in chosen}


def _served(serve, images: Sequence[bytes]) -> List[dict]:
    import tensorflow as tf

    out = serve(image_bytes=tf.constant(list(images)))
    grades = out[features.GRADE_OUTPUT].numpy()
    flags = (out[features.OOD_FLAG_OUTPUT].numpy() if features.OOD_FLAG_OUTPUT in out
             else np.zeros(len(images), bool))
    reasons = ([r.decode() for r in out[features.OOD_REASON_OUTPUT].numpy()]
               if features.OOD_REASON_OUTPUT in out else [None] * len(images))
    return [{"grade": int(g), "flagged": bool(f), "reason": r}
            for g, f, r in zip(grades, flags, reasons)]


def run_table(serve, films: Dict[str, np.ndarray],
              transforms: Dict[str, Transform] = None) -> dict:
    """Every film and its transformed copies through one serving signature.

    Args:
      serve: a `serving_default`-like concrete function taking `image_bytes` string [N].
      films: {name: uint8 gray [H, W]}.
      transforms: the rows; TRANSFORMS by default.

    Returns:
      {"rows": [{"film", "transform", "original", "copy", "verdict"}],
       "summary": {transform: {verdict: count}}, "held": {transform: share held}}.
    """
    transforms = transforms or TRANSFORMS
    rows = []
    for name, film in films.items():
        copies = {t: spec.make(film) for t, spec in transforms.items()}
        results = _served(serve, [encode_png(film)] + list(copies.values()))
        original = results[0]
        for (t, spec), copy in zip(transforms.items(), results[1:]):
            rows.append({"film": name, "transform": t, "original": original, "copy": copy,
                         "verdict": verdict(original, copy, spec.reason)})
    summary = {t: dict(collections.Counter(r["verdict"] for r in rows if r["transform"] == t))
               for t in transforms}
    held = {t: sum(counts.get(v, 0) for v in HELD) / max(1, sum(counts.values()))
            for t, counts in summary.items()}
    return {"rows": rows, "summary": summary, "held": held}


def input_check_rates(films: Dict[str, np.ndarray], batch: int = 50) -> dict:
    """False-flag and detection rates of the current code's model-free input checks.

    Args:
      films: {name: uint8 gray [H, W]} upright originals.
      batch: films per preprocessing call.

    Returns:
      {variant: {reason code: share of the variant's films failing that check}} for the
      variants original, inverted, rotated_90, rotated_180, rotated_270; an original's
      share is a false-flag rate, the matching variant's share a detection rate.
    """
    import tensorflow as tf

    from components import ood, preprocessing

    variants = {"original": lambda f: f, "inverted": lambda f: 255 - f,
                "rotated_90": lambda f: np.rot90(f, 1), "rotated_180": lambda f: np.rot90(f, 2),
                "rotated_270": lambda f: np.rot90(f, 3)}
    arrays = list(films.values())
    # The Transform graph's upright sign, learned as its analyzer does: the sign of the
    # originals' mean vertical asymmetry.
    _, measures = preprocessing.preprocess_with_checks(
        tf.constant([encode_png(f) for f in arrays]), 64, "none")
    sign = 1.0 if float(np.mean(measures[features.VERTICAL_KEY].numpy())) >= 0 else -1.0
    rates = {}
    for name, make in variants.items():
        failed = collections.defaultdict(list)
        for start in range(0, len(arrays), batch):
            encoded = [encode_png(np.ascontiguousarray(make(f)))
                       for f in arrays[start:start + batch]]
            _, measures = preprocessing.preprocess_with_checks(tf.constant(encoded), 64, "none")
            measures[features.UPRIGHT_KEY] = measures[features.VERTICAL_KEY] * sign
            for code, ratio in ood.input_check_ratios(measures).items():
                failed[code].extend((ratio.numpy() > 1.0).tolist())
        rates[name] = {code: float(np.mean(values)) for code, values in failed.items()}
        rates[name]["any"] = float(np.mean(np.any([failed[c] for c in failed], axis=0)))
    return rates


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a SavedModel directory (e.g. serving_model/koa/<v>)")
    parser.add_argument("--films", type=Path, default=DEFAULT_FILMS,
                        help="folder of original films (default: the shared kneeKL224 train)")
    parser.add_argument("--count", type=int, default=60, help="films through the model")
    parser.add_argument("--check-rates", type=int, default=0, metavar="N",
                        help="also measure the input checks' rates on N films")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/metamorphic.json")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from components import atomic_dir
    from koa.cli import setup_logging
    setup_logging()
    if not os.path.isfile(os.path.join(args.model, "saved_model.pb")):
        parser.error(f"{args.model} is not a SavedModel directory (no saved_model.pb)")
    try:
        films = load_films(args.films, args.count, args.seed)
    except FileNotFoundError as e:
        parser.error(str(e))
    serve = tf.saved_model.load(args.model).signatures[features.SERVING_SIGNATURE]
    table = run_table(serve, films)
    result = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "films": str(args.films), "count": len(films), "seed": args.seed,
        "summary": table["summary"], "held": table["held"],
        "failures": [r for r in table["rows"] if r["verdict"] not in HELD],
    }
    for name, share in table["held"].items():
        logger.info("%-22s held %5.1f%%  %s", name, 100 * share, table["summary"][name])
    if args.check_rates:
        rates = input_check_rates(load_films(args.films, args.check_rates, args.seed + 1))
        result["input_check_rates"] = {"films": args.check_rates, "rates": rates}
        for variant, by_code in rates.items():
            logger.info("input checks on %-11s %s", variant,
                        {c: round(r, 3) for c, r in by_code.items()})

    atomic_dir.update_json(args.out, os.path.abspath(args.model), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
