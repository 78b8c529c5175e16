"""Benchmark: how much averaging several trained models buys over the best one alone.

Runs each model's serving signature on every film of a labelled <grade>/ folder (the
dataset's validation split by default) and recovers its logits before the grade offsets:
the served probabilities are softmax((logits + offsets) / T) (components/export.py), so
T * log(p) - offsets equals the (test-time-augmented) logits up to a constant per film,
with T and the offsets read from the model's training record
(assets.extra/training_history.json). Every combination of two or more models is scored
by the argmax of its mean logits, and each single model by its own argmax, all before
grade offsets, so the comparison is network against network. Prints accuracy, QWK and MAE
as ratios to the best single model of the same run, and writes JSON.

    python benchmarks/ensemble_gain.py --model build/tfx/Trainer/model/18/Format-Serving \\
        --model build/tfx/Trainer/model/38/Format-Serving --images ../shared/data/kneeKL224-val
"""

import argparse
import datetime
import itertools
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.ordinal_decision import labelled_films, serve_films  # noqa: E402
from components import features  # noqa: E402

features.select_keras_2()  # before TensorFlow is imported

logger = logging.getLogger("ensemble_gain")


def offset_free_logits(model_dir: str, films: list):
    """float64 [N, K] logits of `model_dir` for `films` (before offsets, row mean 0).

    Raises:
      SystemExit: the model has no training record with `temperature` and
        `grade_offsets` (it was not exported by this project's Trainer).
    """
    import numpy as np
    import tensorflow as tf

    record = os.path.join(model_dir, "assets.extra", "training_history.json")
    try:
        with open(record) as f:
            stats = json.load(f)["stats"]
        temperature, offsets = float(stats["temperature"]), np.array(stats["grade_offsets"])
    except (OSError, KeyError, ValueError) as e:
        raise SystemExit(f"{model_dir}: no usable training record ({record}): {e}")
    serve = tf.saved_model.load(model_dir).signatures[features.SERVING_SIGNATURE]
    probabilities = serve_films(serve, [path for path, _ in films])[
        features.PROBABILITIES_OUTPUT]
    # float32 probabilities can underflow to 0 for a very unlikely grade.
    logits = (temperature * np.log(np.clip(probabilities, 1e-30, None))
              - offsets)
    return logits - logits.mean(axis=1, keepdims=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True,
                        help="a SavedModel folder exported by the Trainer (give two or more)")
    parser.add_argument("--images", default="../shared/data/kneeKL224-val")
    parser.add_argument("--out", default=os.path.join("build", "benchmarks",
                                                      "ensemble_gain.json"))
    args = parser.parse_args(argv)
    if len(args.model) < 2:
        parser.error("give at least two --model folders")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import numpy as np

    from components import atomic_dir, ordinal_decision

    films = labelled_films(args.images)
    labels = np.array([grade for _, grade in films])
    k = features.NUM_GRADES
    logits = {}
    for model_dir in args.model:
        logits[model_dir] = offset_free_logits(model_dir, films)
        logger.info("%s: %d films scored", model_dir, len(films))

    scored = []
    for size in range(1, len(logits) + 1):
        for members in itertools.combinations(args.model, size):
            mean = np.mean([logits[m] for m in members], axis=0)
            scored.append({"members": list(members),
                           **ordinal_decision.scores(labels, mean.argmax(axis=1), k)})
    best = max((s for s in scored if len(s["members"]) == 1), key=lambda s: s["accuracy"])
    for s in scored:
        s["accuracy_ratio_to_best_single"] = s["accuracy"] / best["accuracy"]
        s["qwk_ratio_to_best_single"] = s["qwk"] / best["qwk"]
        s["mae_ratio_to_best_single"] = s["mae"] / best["mae"]
        logger.info("%s: accuracy %.3f (x%.3f)  QWK %.3f (x%.3f)  MAE %.3f (x%.3f)  "
                    "recall %s", " + ".join(s["members"]),
                    s["accuracy"], s["accuracy_ratio_to_best_single"], s["qwk"],
                    s["qwk_ratio_to_best_single"], s["mae"], s["mae_ratio_to_best_single"],
                    "/".join(f"{r:.2f}" for r in s["recall"]))
    atomic_dir.write_json(args.out, {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "images": args.images, "films": len(films),
        "decision": "argmax of mean logits before grade offsets (test-time augmentation as "
                    "each model serves it)",
        "best_single": best["members"][0], "results": scored,
    })
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
