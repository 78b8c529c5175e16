"""Benchmark: does a pushed model flag images that are not knee radiographs?

Scores the non-knee probe images of components/non_knee.py (blank frames, noise, gradients,
colour textures, a drawn chest film) with the model's `serving_default` signature, against
the baseline of the same run: the validation knees the model was fitted for. Prints each
probe's score as a ratio to the knees' 99th percentile and writes JSON, keyed by the
model's directory.

    python benchmarks/ood_probes.py --model serving_model/koa/<version> \
        --eval-dir build/ingested/eval --image-size 224
"""

import argparse
import datetime
import glob
import logging
import os
import sys

from components import features  # noqa: E402
features.select_keras_2()  # before TensorFlow is imported

logger = logging.getLogger("ood_probes")


def _probe_scores(version_dir: str, eval_dir: str, image_size: int) -> dict:
    """OOD score of each non-knee probe and the share of validation knees flagged."""
    import numpy as np
    import tensorflow as tf

    from components import features, non_knee

    served = tf.saved_model.load(version_dir)
    serve = served.signatures[features.SERVING_SIGNATURE]
    probes = non_knee.probe_images(size=image_size, seed=0)
    out = serve(image_bytes=tf.constant(list(probes.values())))
    scores = dict(zip(probes, (float(s) for s in out[features.OOD_SCORE_OUTPUT].numpy())))

    files = glob.glob(os.path.join(eval_dir, "*"))
    records = [bytes(r.numpy()) for r in tf.data.TFRecordDataset(files)]
    images = [tf.train.Example.FromString(r).features.feature[features.IMAGE_KEY]
              .bytes_list.value[0] for r in records]
    knee_scores = []
    for start in range(0, len(images), 64):
        batch = serve(image_bytes=tf.constant(images[start:start + 64]))
        knee_scores.extend(batch[features.OOD_SCORE_OUTPUT].numpy().tolist())
    knee_scores = np.array(knee_scores)
    return {
        "probe_scores": scores,
        "probes_flagged": int(sum(s > 1.0 for s in scores.values())),
        "probes_total": len(scores),
        "val_knees_flagged_share": float(np.mean(knee_scores > 1.0)),
        "val_knee_score_percentiles": {p: float(np.percentile(knee_scores, p))
                                       for p in (50, 90, 99)},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a pushed SavedModel version dir")
    parser.add_argument("--eval-dir", required=True,
                        help="ingested validation TFRecords (build/ingested/eval)")
    parser.add_argument("--image-size", type=int, default=224, help="probe image size")
    parser.add_argument("--out", default="benchmarks/results/ood_probes.json")
    args = parser.parse_args(argv)

    from components import atomic_dir
    from koa.cli import setup_logging
    setup_logging()
    result = _probe_scores(args.model, args.eval_dir, args.image_size)
    result["when"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    knee_p99 = result["val_knee_score_percentiles"][99]
    result["probe_score_over_knee_p99"] = {
        name: score / knee_p99 for name, score in result["probe_scores"].items()}
    for name, ratio in sorted(result["probe_score_over_knee_p99"].items()):
        logger.info("%-24s score %.2f = %.2f x the validation knees' p99", name,
                    result["probe_scores"][name], ratio)
    logger.info("flagged: %d/%d probes, %.1f%% of validation knees", result["probes_flagged"],
                result["probes_total"], 100 * result["val_knees_flagged_share"])

    atomic_dir.update_json(args.out, os.path.abspath(args.model), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
