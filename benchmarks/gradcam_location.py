"""Benchmark: which heatmap of a pushed model sits on the knee joint, and what it costs.

The shared films are crops centred on the joint, so the joint lies in the central box
(rows 30-70 %, columns 15-85 % of the film, 28 % of its area). For N validation films and
each candidate heatmap (Grad-CAM, Grad-CAM++ and LayerCAM on several MobileNetV2 blocks, of
the film as given and with its mirror's, and the pushed model's own `gradcam` output) it
reports the median share of the heatmap's mass
inside that box and the share of films whose heatmap peak is inside it, as ratios to the
box's area share (what a heatmap spread evenly over the film would score) and to the
pushed model's heatmap. All candidates explain the grade the pushed model returned, on the
same films in the same run. A map that merely outlines the anatomy would sit on the joint
whatever the grade, so each is also compared with the same method's map for the grade
furthest from the returned one (median Pearson correlation: near 1, the map does not
depend on the grade).

The pushed SavedModel holds signatures only (exported with save_traces=False), so the
differentiable model is rebuilt: `components.model.build_model` from the configuration in
its training record, with the SavedModel's variables restored into it. The rebuilt model
must reproduce the served probabilities (checked; the run stops if it does not) and the
served heatmap (reported).

It also times the heatmap's work at batch 1 for the pushed model's method and the one its
configuration serves (`model.heatmap_method` on `model.heatmap_layer`; `_latency`),
alternating calls in the same run. Writes JSON.

    python benchmarks/gradcam_location.py --model serving_model/koa/<version> \\
        --images ../shared/data/kneeKL224-val --count 50
"""

import argparse
import datetime
import glob
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.ordinal_decision import encoded_batches  # noqa: E402
from components import features  # noqa: E402

features.select_keras_2()  # before TensorFlow is imported

logger = logging.getLogger("gradcam_location")
ROWS, COLS = (0.30, 0.70), (0.15, 0.85)
# MobileNetV2 blocks: the last feature map (7x7 at 224 px), two 14x14 ones (the expansion
# feeding the last stride-2 block, the last residual sum before it) and a 28x28 one.
LAYERS = ("out_relu", "block_13_expand_relu", "block_12_add", "block_5_add")
SERVED = "served"
BATCH = 10
AGREEMENT_TOLERANCE = 1e-3


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


def _box_scores(heat):
    """[N, H, W] heatmaps -> (mass share in the box [N], peak inside the box [N] bool)."""
    import numpy as np

    _, h, w = heat.shape
    r0, r1 = int(ROWS[0] * h), int(ROWS[1] * h)
    c0, c1 = int(COLS[0] * w), int(COLS[1] * w)
    total = heat.sum(axis=(1, 2))
    inside = heat[:, r0:r1, c0:c1].sum(axis=(1, 2))
    shares = np.divide(inside, total, out=np.zeros_like(total), where=total > 0)
    peaks = heat.reshape(len(heat), -1).argmax(axis=1)
    rows, cols = np.unravel_index(peaks, (h, w))
    return shares, (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)


def restore(saved_model_dir: str):
    """The pushed model rebuilt as Keras, with its post-hoc parts, and its training config.

    Raises:
      SystemExit: the SavedModel's variables do not fill the rebuilt model.
    """
    import numpy as np

    from components import calibration, export, grade_offsets, ood
    from components.model import build_model
    from components.model_config import ModelConfig

    config_values = dict(export.read_training_record(saved_model_dir)["stats"]["config"])
    config_values["weights"] = "none"  # every weight comes from the SavedModel
    config = ModelConfig.from_dict(config_values)
    model = build_model(config)
    width = int(model.get_layer("pool").output.shape[-1])
    # Placeholders of the right shapes; their values are restored below.
    model.grade_offsets = grade_offsets.GradeOffsets(np.zeros(features.NUM_GRADES))
    model.temperature_scaling = calibration.TemperatureScaling(1.0)
    model.feature_distance = ood.FeatureDistance(
        np.zeros((features.NUM_GRADES, width)), np.eye(width), 1.0)
    status = model.load_weights(os.path.join(saved_model_dir, "variables", "variables"))
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise SystemExit(f"the variables of {saved_model_dir} do not fit a model built from "
                         f"its recorded config: {e}") from e
    status.expect_partial()  # the optimizer's slots and the Transform layer stay unread
    return model, config


def _candidates(model, config, pushed, films, explain):
    """Per candidate name, (mass shares [N], peaks inside [N]); and the agreement checks.

    Every layer and method is scored twice: on the film as given (what `gradcam` serves),
    and as the sum of that map and the mirrored film's map turned back ("+mirror"), the
    two views the TTA grade is averaged from.
    """
    import numpy as np
    import tensorflow as tf

    from components import export, preprocessing
    from components.model import with_tta

    served = pushed.signatures[features.GRADCAM_SIGNATURE]
    size = (config.image_size, config.image_size)
    scores, contrast = {}, {}
    worst = {"probabilities": 0.0, "last_block_gradcam_vs_served": 0.0}
    for start, batch in encoded_batches(films, BATCH):
        out = served(image_bytes=tf.constant(batch))
        images, _ = preprocessing.preprocess_with_checks(
            tf.constant(batch), config.image_size, config.equalisation)
        grade = out[features.GRADE_OUTPUT]
        activations, logits, grads = explain(images, grade)
        mirror_activations, _, mirror_grads = explain(tf.image.flip_left_right(images), grade)
        # The grade furthest from the returned one: a map that explains the grade should
        # differ from this grade's map; an anatomy outline would not.
        _, _, far_grads = explain(images, tf.where(grade <= 2, 4, 0))
        decided = with_tta(model, images, logits, config.tta)
        probabilities = tf.nn.softmax(model.temperature_scaling(model.grade_offsets(decided)))
        worst["probabilities"] = max(worst["probabilities"], float(np.abs(
            probabilities.numpy() - out[features.PROBABILITIES_OUTPUT].numpy()).max()))
        maps = {SERVED: out[features.HEATMAP_OUTPUT].numpy()}
        for i, layer in enumerate(LAYERS):
            for method in export.HEATMAP_METHODS:
                cam = export.class_activation_map(activations[i], grads[i], method)
                mirror = export.class_activation_map(mirror_activations[i], mirror_grads[i],
                                                     method)
                name = f"{method}@{layer}"
                maps[name] = export.heatmap(cam, size).numpy()
                far = export.heatmap(export.class_activation_map(
                    activations[i], far_grads[i], method), size).numpy()
                contrast.setdefault(name, []).extend(
                    _correlation(a, b) for a, b in zip(maps[name], far))
                both = cam + tf.image.flip_left_right(mirror[..., None])[..., 0]
                maps[name + "+mirror"] = export.heatmap(both, size).numpy()
        worst["last_block_gradcam_vs_served"] = max(
            worst["last_block_gradcam_vs_served"],
            float(np.abs(maps[f"{export.GRADCAM}@out_relu"] - maps[SERVED]).max()))
        for name, heat in maps.items():
            shares, inside = _box_scores(heat)
            old = scores.setdefault(name, (np.zeros(0), np.zeros(0, bool)))
            scores[name] = (np.concatenate([old[0], shares]), np.concatenate([old[1], inside]))
        logger.info("%d/%d films", min(start + BATCH, len(films)), len(films))
    return scores, contrast, worst


def _correlation(a, b) -> float:
    """Pearson correlation of two maps; 1.0 when either is constant (nothing tells them
    apart)."""
    import numpy as np

    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norm if norm > 0 else 1.0


def _latency(model, config, film: bytes, calls: int):
    """p50/p90 ms at batch 1 of the `gradcam` signature's work, alternating calls.

    Image bytes -> the product's preprocessing -> `export.grade_heatmap` with the served
    decision (TTA, offsets, temperature), for the pushed model's heatmap (Grad-CAM on the
    last block), the configuration's (`config.heatmap_method` on `config.heatmap_layer`)
    and LayerCAM on the earlier LAYERS; and the same decision without a heatmap, for
    scale. The Transform layer and the out-of-distribution outputs, alike in all, are left
    out.
    """
    import numpy as np
    import tensorflow as tf

    from components import export, preprocessing
    from components.model import features_and_logits, tapped_backbone, with_tta

    def decide(images):
        def grade(pooled, logits):
            decided = model.temperature_scaling(model.grade_offsets(
                with_tta(model, images, logits, config.tta)))
            return {features.GRADE_OUTPUT: tf.argmax(decided, axis=-1)}
        return grade

    def preprocess(image_bytes):
        return preprocessing.preprocess_with_checks(image_bytes, config.image_size,
                                                    config.equalisation)[0]

    def heatmap_function(layer, method):
        tapped = tapped_backbone(model, [layer])

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def run(image_bytes):
            images = preprocess(image_bytes)
            return export.grade_heatmap(model, tapped, images, decide(images), method)[1]
        return run

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def no_heatmap(image_bytes):
        images = preprocess(image_bytes)
        _, pooled, logits = features_and_logits(model, images)
        return decide(images)(pooled, logits)[features.GRADE_OUTPUT]

    heatmaps = dict.fromkeys([(export.GRADCAM, "out_relu"),
                              (config.heatmap_method, config.heatmap_layer),
                              *((export.LAYERCAM, layer) for layer in LAYERS[1:])])
    functions = {f"{method}@{layer}": heatmap_function(layer, method)
                 for method, layer in heatmaps}
    functions["no_heatmap"] = no_heatmap
    request = tf.constant([film])
    for fn in functions.values():
        fn(request)  # trace and warm up
    times = {name: [] for name in functions}
    for _ in range(calls):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn(request).numpy()
            times[name].append(1000.0 * (time.perf_counter() - start))
    summary = {name: {"p50_ms": float(np.percentile(t, 50)),
                      "p90_ms": float(np.percentile(t, 90))} for name, t in times.items()}
    pushed = summary[f"{export.GRADCAM}@out_relu"]["p50_ms"]
    for name in functions:
        summary[name]["p50_ratio_to_pushed"] = summary[name]["p50_ms"] / pushed
    summary["pushed"] = f"{export.GRADCAM}@out_relu"
    summary["today"] = f"{config.heatmap_method}@{config.heatmap_layer}"
    summary["calls"] = calls
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a pushed SavedModel version folder")
    parser.add_argument("--images", default="../shared/data/kneeKL224-val")
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--calls", type=int, default=30,
                        help="timed batch-1 calls per heatmap (0: no latency comparison)")
    parser.add_argument("--out", default=os.path.join("build", "benchmarks",
                                                      "gradcam_location.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import numpy as np
    import tensorflow as tf

    from components import atomic_dir
    from components.model import tapped_backbone, tapped_features_and_logits

    pushed = tf.saved_model.load(args.model)
    model, config = restore(args.model)
    tapped = tapped_backbone(model, LAYERS)

    @tf.function
    def explain(images, grade):
        """Activations of LAYERS, logits, d(logit of `grade`)/d(activations)."""
        with tf.GradientTape() as tape:
            activations, _, logits = tapped_features_and_logits(model, tapped, images)
            score = tf.gather(logits, grade, axis=1, batch_dims=1)
        return activations, logits, tape.gradient(score, activations)

    films = _films(args.images, args.count)
    scores, contrast, worst = _candidates(model, config, pushed, films, explain)
    if worst["probabilities"] > AGREEMENT_TOLERANCE:
        raise SystemExit(f"the rebuilt model's probabilities differ from the served ones by "
                         f"{worst['probabilities']:.2g}: the comparison would not be of the "
                         "pushed model")

    box_area = (ROWS[1] - ROWS[0]) * (COLS[1] - COLS[0])
    reference = (float(np.median(scores[SERVED][0])), float(np.mean(scores[SERVED][1])))
    candidates = {}
    for name, (shares, inside) in scores.items():
        mass, peak = float(np.median(shares)), float(np.mean(inside))
        candidates[name] = {
            "median_mass_in_box": mass, "peak_in_box_share": peak,
            "mass_quartiles": [float(q) for q in np.percentile(shares, [25, 75])],
            "median_mass_ratio_to_uniform": mass / box_area,
            "peak_in_box_ratio_to_uniform": peak / box_area,
            "median_mass_ratio_to_served": mass / reference[0] if reference[0] else None,
            "peak_in_box_ratio_to_served": peak / reference[1] if reference[1] else None,
        }
        if name in contrast:
            candidates[name]["median_correlation_with_far_grade_map"] = float(
                np.median(contrast[name]))
        logger.info("%-38s mass in box %.2f (x%.2f uniform), peak in box %.0f%% (x%.2f)%s",
                    name, mass, mass / box_area, 100 * peak, peak / box_area,
                    f", correlation with the far grade's map {np.median(contrast[name]):.2f}"
                    if name in contrast else "")
    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "model": os.path.abspath(args.model), "images": args.images, "films": len(films),
        "box": {"rows": ROWS, "cols": COLS, "area_share": box_area},
        "score": "logit of the grade the pushed model returned, image as given",
        "far_grade": "4 for returned grades 0-2, else 0",
        "rebuilt_model_max_abs_difference": worst,
        "candidates": candidates,
    }
    atomic_dir.write_json(args.out, result)
    if args.calls:
        with open(films[0], "rb") as f:
            latency = _latency(model, config, f.read(), args.calls)
        result["latency_batch_1"] = latency
        atomic_dir.write_json(args.out, result)
        for name, times in latency.items():
            if isinstance(times, dict):
                logger.info("batch 1 %-32s p50 %.0f ms (x%.2f the pushed heatmap's)", name,
                            times["p50_ms"], times["p50_ratio_to_pushed"])
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
