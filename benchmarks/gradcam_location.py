"""Benchmark: does a pushed model's Grad-CAM sit on the knee joint?

The shared films are crops centred on the joint, so the joint lies in the central box
(rows 30-70 %, columns 15-85 % of the film, 28 % of its area). For N validation films this
calls the model's `gradcam` signature and reports, per film, the share of the heatmap's
mass inside that box and whether the heatmap's peak is inside it; summary: the median
share, the share of films whose peak is inside, and both as ratios to the box's area share
(what a heatmap spread evenly over the film would score). Writes JSON.

    python benchmarks/gradcam_location.py --model serving_model/koa/<version> \\
        --images ../shared/data/kneeKL224-val --count 50
"""

import argparse
import datetime
import glob
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from components import features  # noqa: E402

features.select_keras_2()  # before TensorFlow is imported

logger = logging.getLogger("gradcam_location")
ROWS, COLS = (0.30, 0.70), (0.15, 0.85)


def _films(root: str, count: int) -> list:
    """`count` films spread evenly over the grades of a <grade>/ folder, sorted by name."""
    per_grade = [sorted(glob.glob(os.path.join(root, str(g), "*.png")))
                 for g in range(features.NUM_GRADES)]
    if not any(per_grade):
        raise SystemExit(f"no <grade>/*.png films under {root}")
    chosen, index = [], 0
    while len(chosen) < count and any(index < len(files) for files in per_grade):
        chosen += [files[index] for files in per_grade if index < len(files)]
        index += 1
    return chosen[:count]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a pushed SavedModel version folder")
    parser.add_argument("--images", default="../shared/data/kneeKL224-val")
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--out", default=os.path.join("build", "benchmarks",
                                                      "gradcam_location.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import numpy as np
    import tensorflow as tf

    from components import atomic_dir

    gradcam = tf.saved_model.load(args.model).signatures[features.GRADCAM_SIGNATURE]
    films = _films(args.images, args.count)
    shares, peaks_inside = [], []
    for i, path in enumerate(films, 1):
        with open(path, "rb") as f:
            heat = gradcam(image_bytes=tf.constant([f.read()]))[features.HEATMAP_OUTPUT]
        heat = heat.numpy()[0]
        h, w = heat.shape
        r0, r1 = int(ROWS[0] * h), int(ROWS[1] * h)
        c0, c1 = int(COLS[0] * w), int(COLS[1] * w)
        total = float(heat.sum())
        shares.append(float(heat[r0:r1, c0:c1].sum()) / total if total > 0 else 0.0)
        row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
        peaks_inside.append(bool(r0 <= row < r1 and c0 <= col < c1))
        if i % 10 == 0:
            logger.info("%d/%d films", i, len(films))
    box_area = (ROWS[1] - ROWS[0]) * (COLS[1] - COLS[0])
    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "model": os.path.abspath(args.model), "images": args.images, "films": len(films),
        "box": {"rows": ROWS, "cols": COLS, "area_share": box_area},
        "median_mass_in_box": float(np.median(shares)),
        "peak_in_box_share": float(np.mean(peaks_inside)),
        "median_mass_ratio_to_uniform": float(np.median(shares)) / box_area,
        "peak_in_box_ratio_to_uniform": float(np.mean(peaks_inside)) / box_area,
    }
    atomic_dir.write_json(args.out, result)
    logger.info("median heatmap mass in the joint box %.2f (%.2fx uniform), peak in box "
                "for %.0f%% of films (%.2fx uniform); wrote %s", result["median_mass_in_box"],
                result["median_mass_ratio_to_uniform"], 100 * result["peak_in_box_share"],
                result["peak_in_box_ratio_to_uniform"], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
