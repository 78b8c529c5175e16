"""Benchmark: argmax with grade offsets against the expected grade with fitted cut-points.

Runs a pushed model's serving signature on every film of a labelled <grade>/ folder (the
dataset's validation split by default) and scores, from the same served probabilities:
  - `served`: the grade the model returns (argmax of calibrated, grade-offset logits);
  - `rounded`: the expected grade rounded (cut-points k - 0.5);
  - `cut_points_in_sample`: cut-points fitted on these films and scored on them
    (optimistic);
  - `cut_points_cross_fitted`: cut-points fitted on one half, scored on the other.
Prints each decision's accuracy, QWK and MAE as ratios to `served`, and writes JSON.

    python benchmarks/ordinal_decision.py --model serving_model/koa/<version> \\
        --images ../shared/data/kneeKL224-val
"""

import argparse
import datetime
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from components import features  # noqa: E402

features.select_keras_2()  # before TensorFlow is imported

logger = logging.getLogger("ordinal_decision")
_BATCH = 32


def labelled_films(root: str) -> list:
    """[(path, grade)] of every image in the <grade>/ folders under `root`, as ingestion
    lists them (`ingest_sources.scan_folders`).

    Raises:
      SystemExit: `root` cannot be read, is not a <grade>/ tree, or holds no image.
    """
    from components import ingest_sources

    try:
        films = [(str(item.path), item.grade)
                 for item in ingest_sources.scan_folders(Path(root)).items]
    except (OSError, ingest_sources.IngestError) as e:
        raise SystemExit(f"--images {root}: {e}")
    if not films:
        raise SystemExit(f"--images {root}: no films in <grade>/ folders")
    return films


def encoded_batches(paths: list, batch_size: int = _BATCH):
    """Yields (start index, list of the encoded file bytes) for `batch_size` files at a time."""
    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start:start + batch_size]:
            with open(path, "rb") as f:
                batch.append(f.read())
        yield start, batch


def serve_films(serve, paths: list) -> dict:
    """Runs a serving signature (image bytes -> outputs) over image files, _BATCH at a time.

    Returns:
      {output name: numpy array [len(paths), ...]}, the batches concatenated in order.
    """
    import numpy as np
    import tensorflow as tf

    batches = []
    for start, images in encoded_batches(paths):
        out = serve(**{features.SERVING_INPUT: tf.constant(images)})
        batches.append({name: value.numpy() for name, value in out.items()})
        logger.info("%d/%d films", min(start + _BATCH, len(paths)), len(paths))
    return {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a pushed SavedModel version folder")
    parser.add_argument("--images", default="../shared/data/kneeKL224-val")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=os.path.join("build", "benchmarks",
                                                      "ordinal_decision.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import numpy as np
    import tensorflow as tf

    from components import atomic_dir, ordinal_decision

    serve = tf.saved_model.load(args.model).signatures[features.SERVING_SIGNATURE]
    films = labelled_films(args.images)
    outputs = serve_films(serve, [path for path, _ in films])
    probabilities = outputs[features.PROBABILITIES_OUTPUT]
    served = outputs[features.GRADE_OUTPUT]
    labels = np.array([grade for _, grade in films])
    k = features.NUM_GRADES

    expected = ordinal_decision.expected_grade(probabilities)
    cut_points = ordinal_decision.fit(expected, labels, k)
    decisions = {
        "served": served,
        "rounded": ordinal_decision.grades_from_cut_points(expected, np.arange(k - 1) + 0.5),
        "cut_points_in_sample": ordinal_decision.grades_from_cut_points(expected, cut_points),
        "cut_points_cross_fitted": ordinal_decision.cross_fitted(expected, labels, k,
                                                                 seed=args.seed),
    }
    scored = {name: ordinal_decision.scores(labels, predicted, k)
              for name, predicted in decisions.items()}
    baseline = scored["served"]
    for name, s in scored.items():
        logger.info("%-24s accuracy %.3f (x%.3f)  QWK %.3f (x%.3f)  MAE %.3f (x%.3f)  "
                    "recall %s", name, s["accuracy"], s["accuracy"] / baseline["accuracy"],
                    s["qwk"], s["qwk"] / baseline["qwk"], s["mae"], s["mae"] / baseline["mae"],
                    "/".join(f"{r:.2f}" for r in s["recall"]))
    atomic_dir.write_json(args.out, {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "model": os.path.abspath(args.model), "images": args.images, "films": len(films),
        "cut_points": cut_points.tolist(), "decisions": scored,
    })
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
