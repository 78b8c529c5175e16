"""Benchmark: does the test-time mirror (`model.tta`) still pay once the grade offsets are fitted?

For each Trainer export given, rebuilds its Keras model from the training record
(assets.extra/training_history.json: the ModelConfig it trained with) and loads the
exported variables, then computes the logits of every film of a labelled <grade>/ folder
(the dataset's validation split by default) twice: the film as given (`plain`) and averaged
with its mirror (`tta`, what the model serves when it trained with `tta: true`). For each,
it refits what `components/post_hoc.py` fits on validation — grade offsets at the model's
recall floor, then temperature — and reports accuracy (in sample, and cross-fitted averaged
over ten random halvings), QWK, MAE, per-grade recall and ECE, with ratios to `tta`, plus
the forward-pass CPU time of each measured in the same run. Before scoring it checks that
the rebuilt model reproduces the served probabilities (largest difference ≤ 1e-4), so the
figures are the export's.

    python benchmarks/tta_decision.py --model build/tfx/Trainer/model/46/Format-Serving \\
        --images ../shared/data/kneeKL224-val --out benchmarks/results/tta_decision.json
"""

import argparse
import datetime
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.gradcam_location import restore  # noqa: E402
from benchmarks.ordinal_decision import encoded_batches, labelled_films  # noqa: E402
from components import features  # noqa: E402

features.select_keras_2()  # before TensorFlow is imported

logger = logging.getLogger("tta_decision")
_BATCH = 32
# Rebuilt and served probabilities may differ by float32 rounding only.
_MAX_SERVED_DIFFERENCE = 1e-4


def _logits(model, config, model_dir: str, paths: list):
    """float64 [N, K] logits of the films as given and of their mirrors, float32 [N, K]
    probabilities the export serves for them, and the CPU seconds of each pass."""
    import numpy as np
    import tensorflow as tf

    from components import preprocessing
    from components.model import features_and_logits

    logits = tf.function(lambda images: features_and_logits(model, images)[2])
    # Traced once before timing, at the batch shape most calls have.
    logits(tf.zeros([_BATCH, config.image_size, config.image_size, 1]))
    serve = tf.saved_model.load(model_dir).signatures[features.SERVING_SIGNATURE]
    plain, mirrored, served = [], [], []
    seconds = {"plain": 0.0, "mirror": 0.0}
    for start, encoded in encoded_batches(paths, _BATCH):
        encoded = tf.constant(encoded)
        images = preprocessing.preprocess_images(encoded, config.image_size,
                                                 config.equalisation)
        for name, batch, out in (("plain", images, plain),
                                 ("mirror", tf.image.flip_left_right(images), mirrored)):
            begin = time.process_time()
            out.append(logits(batch).numpy().astype(np.float64))
            seconds[name] += time.process_time() - begin
        served.append(serve(**{features.SERVING_INPUT: encoded})[
            features.PROBABILITIES_OUTPUT].numpy())
        logger.info("%s: %d/%d films", os.path.basename(os.path.dirname(model_dir)),
                    min(start + _BATCH, len(paths)), len(paths))
    return (np.concatenate(plain), np.concatenate(mirrored), np.concatenate(served),
            seconds)


def _decision(logits, labels, recall_floor: float) -> dict:
    """What post_hoc.fit would fit on these logits, the scores of its grades, and the
    cross-fitted accuracy (grade_offsets.cross_fitted: ten random halvings)."""
    import numpy as np
    from scipy.special import softmax

    from components import calibration, grade_offsets, ordinal_decision

    offsets = (grade_offsets.fit(logits, labels, recall_floor) if recall_floor > 0
               else np.zeros(logits.shape[1]))
    adjusted = logits + offsets
    temperature = calibration.fit_temperature(adjusted, labels)
    result = {
        "argmax_accuracy": float(np.mean(logits.argmax(1) == labels)),
        "offsets": offsets.tolist(),
        **ordinal_decision.scores(labels, adjusted.argmax(1), logits.shape[1]),
        "temperature": temperature,
        "ece": calibration.expected_calibration_error(softmax(adjusted / temperature, 1),
                                                      labels),
    }
    if recall_floor > 0:
        estimate = grade_offsets.cross_fitted(logits, labels, recall_floor)
        result["accuracy_cross_fitted"] = estimate["accuracy"]
        result["min_recall_cross_fitted"] = estimate["min_recall"]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True,
                        help="a SavedModel folder exported by the Trainer (repeatable)")
    parser.add_argument("--images", default="../shared/data/kneeKL224-val")
    parser.add_argument("--out", default=os.path.join("build", "benchmarks",
                                                      "tta_decision.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import numpy as np
    from scipy.special import softmax

    from components import atomic_dir, export

    films = labelled_films(args.images)
    labels = np.array([grade for _, grade in films])
    paths = [str(path) for path, _ in films]

    results = []
    for model_dir in args.model:
        model, config = restore(model_dir)
        stats = export.read_training_record(model_dir)["stats"]
        plain, mirrored, served, seconds = _logits(model, config, model_dir, paths)
        tta = (plain + mirrored) / 2.0
        as_served = tta if config.tta else plain
        rebuilt = softmax((as_served + np.array(stats["grade_offsets"]))
                          / stats["temperature"], axis=1)
        difference = float(np.abs(rebuilt - served).max())
        if difference > _MAX_SERVED_DIFFERENCE:
            raise SystemExit(f"{model_dir}: the rebuilt model's probabilities differ from "
                             f"the served ones by {difference:.2e}; not scoring it")
        entry = {"model": model_dir, "seed": config.seed,
                 "class_balance": config.class_balance,
                 "label_smoothing": config.label_smoothing,
                 "served_with_tta": config.tta, "served_difference": difference,
                 "forward_cpu_seconds_per_film": {
                     "plain": seconds["plain"] / len(paths),
                     "tta": (seconds["plain"] + seconds["mirror"]) / len(paths)}}
        for name, logits in (("tta", tta), ("plain", plain)):
            entry[name] = _decision(logits, labels, config.recall_floor)
        base, other = entry["tta"], entry["plain"]
        entry["plain_ratio_to_tta"] = {
            key: other[key] / base[key] for key in ("accuracy", "qwk", "mae", "ece")}
        if "accuracy_cross_fitted" in base:
            entry["plain_ratio_to_tta"]["accuracy_cross_fitted"] = (
                other["accuracy_cross_fitted"] / base["accuracy_cross_fitted"])
        entry["plain_ratio_to_tta"]["forward_cpu_seconds"] = (
            entry["forward_cpu_seconds_per_film"]["plain"]
            / entry["forward_cpu_seconds_per_film"]["tta"])
        for name in ("tta", "plain"):
            d = entry[name]
            logger.info("%s %s: argmax %.3f, after offsets %.3f (x-fit %s) QWK %.3f MAE %.3f "
                        "ECE %.3f recall %s", model_dir, name, d["argmax_accuracy"],
                        d["accuracy"], f"{d['accuracy_cross_fitted']:.3f}"
                        if "accuracy_cross_fitted" in d else "-", d["qwk"], d["mae"],
                        d["ece"], "/".join(f"{r:.2f}" for r in d["recall"]))
        logger.info("%s plain / tta: %s", model_dir, {
            k: round(v, 3) for k, v in entry["plain_ratio_to_tta"].items()})
        results.append(entry)

    atomic_dir.write_json(args.out, {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "images": args.images, "films": len(films),
        "decision": "grade offsets at each model's recall floor and temperature refitted on "
                    "these films for each of the two logits (as components/post_hoc.py)",
        "results": results,
    })
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
