"""Benchmark: where a CPU train step of the KL-grade model spends its time, and whether
another formulation of the depthwise-convolution gradient, or oneDNN, makes it faster.

Three measurements, each in fresh child processes (batch 32, 224 px, fp32, random films):

- `profile`: one Keras train step of the project's `build_model` traced with the
  TensorFlow profiler; op time per op type, split into forward and backward (backward =
  ops under the gradient tape's name scope).
- `layers`: for one depthwise layer of each MobileNetV2 stage shape, the input and filter
  gradients of the native kernels (DepthwiseConv2dNativeBackpropInput/Filter) against the
  "taps" formulation (below): the largest absolute difference relative to the largest
  gradient magnitude, and the time of native / taps, interleaved.
- `step`: images/s of whole train steps (the project's model, Adam) for each variant; the
  in-process variants (native, taps, bn_unfused) take turns in rounds of a few steps and
  each is given as a ratio to the native step of the same round, with the largest
  difference of its backbone gradients from the native ones (training-mode batch norm).

The "taps" formulation keeps the forward op (DepthwiseConv2dNative) and computes its
gradient with other ops: the input gradient as a forward depthwise convolution of the
(zero-dilated, for stride 2) output gradient with the spatially flipped kernel, the filter
gradient as one multiply-and-reduce per kernel tap (9 for 3x3).
The `bn_unfused` variant switches the batch-norm layers to Keras's non-fused path
(moments and elementwise ops instead of FusedBatchNormV3 and its CPU gradient kernel).
The `onednn` variant is the native step with TF_ENABLE_ONEDNN_OPTS=1 (TensorFlow turns
oneDNN on by default only on Intel CPUs; this machine reports an AMD EPYC); being a process
setting it runs in the next process, not interleaved, and its ratio is of medians.
Gradients of every variant are compared with the native ones before any speed is reported.

    python benchmarks/depthwise_backprop.py profile --alpha 0.35
    python benchmarks/depthwise_backprop.py layers --alpha 0.35 --alpha 1.0
    python benchmarks/depthwise_backprop.py step --alpha 0.35 --rounds 3 --steps 2 \\
        --variant native --variant bn_unfused --variant onednn

Writes build/benchmarks/depthwise_backprop_<mode>.json.
"""

import argparse
import collections
import datetime
import glob
import json
import logging
import statistics
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
logger = logging.getLogger("depthwise_backprop")

BATCH = 32
SIZE = 224
VARIANTS = ("native", "taps", "onednn", "bn_unfused")


def _tensorflow():
    from components import features

    features.select_keras_2()
    import tensorflow as tf

    return tf


def depthwise_taps(tf):
    """A depthwise convolution with DepthwiseConv2dNative forward and the "taps" gradient.

    Returns fn(x [N, H, W, C] float32, kernel [3, 3, C, 1] float32, strides (s, s),
    padding "SAME" | "VALID") -> [N, Ho, Wo, C]. Only the MobileNetV2 case (3x3, depth
    multiplier 1, no dilation, NHWC) is supported; anything else raises ValueError.
    """

    def pads(size, out, stride, padding):
        if padding == "VALID":
            return 0, 0
        total = max((out - 1) * stride + 3 - size, 0)
        return total // 2, total - total // 2

    def fn(x, kernel, strides, padding):
        if tuple(kernel.shape[:2]) != (3, 3) or kernel.shape[3] != 1:
            raise ValueError(f"taps gradient needs a 3x3 kernel, depth multiplier 1; got "
                             f"{kernel.shape}")
        stride = strides[0]
        if strides[1] != stride:
            raise ValueError(f"taps gradient needs equal strides, got {strides}")

        @tf.custom_gradient
        def conv(x, kernel):
            y = tf.nn.depthwise_conv2d(x, kernel, [1, stride, stride, 1], padding)

            def grad(dy):
                n, h, w, c = x.shape
                ho, wo = dy.shape[1], dy.shape[2]
                top, bottom = pads(h, ho, stride, padding)
                left, right = pads(w, wo, stride, padding)
                if stride > 1:  # zero-insertion: dy lands on every stride-th input position
                    dy_up = tf.reshape(
                        tf.pad(dy[:, :, None, :, None, :],
                               [[0, 0], [0, 0], [0, stride - 1], [0, 0], [0, stride - 1],
                                [0, 0]]),
                        [-1, ho * stride, wo * stride, c])[:, :(ho - 1) * stride + 1,
                                                           :(wo - 1) * stride + 1]
                else:
                    dy_up = dy
                # Full correlation with the flipped kernel gives the padded input's gradient.
                full = tf.nn.depthwise_conv2d(
                    tf.pad(dy_up, [[0, 0], [2, 2], [2, 2], [0, 0]]),
                    kernel[::-1, ::-1], [1, 1, 1, 1], "VALID")
                hp, wp = h + top + bottom, w + left + right
                full = tf.pad(full, [[0, 0], [0, hp - full.shape[1]], [0, wp - full.shape[2]],
                                     [0, 0]])
                dx = full[:, top:top + h, left:left + w]
                padded = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
                taps = []
                for a in range(3):
                    for b in range(3):
                        window = padded[:, a:a + (ho - 1) * stride + 1:stride,
                                        b:b + (wo - 1) * stride + 1:stride]
                        taps.append(tf.reduce_sum(window * dy, [0, 1, 2]))
                dk = tf.reshape(tf.stack(taps), [3, 3, c, 1])
                return dx, dk

            return y, grad

        return conv(x, kernel)

    return fn


def _use_taps(tf, model):
    """Routes every DepthwiseConv2D layer of `model` (nested models too) through the taps
    gradient; returns how many layers were changed."""
    keras = tf.keras
    conv = depthwise_taps(tf)
    changed = 0
    for layer in model.submodules:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            def call(inputs, layer=layer):
                outputs = conv(inputs, layer.depthwise_kernel, layer.strides,
                               layer.padding.upper())
                if layer.use_bias:
                    outputs = tf.nn.bias_add(outputs, layer.bias)
                return layer.activation(outputs) if layer.activation else outputs
            layer.call = call
            changed += 1
    return changed


# -- profile ------------------------------------------------------------------------------

def _profile(alpha: float) -> dict:
    tf = _tensorflow()
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    model, images, labels = _model(tf, alpha)
    for _ in range(3):
        model.train_on_batch(images, labels)
    steps = 2
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(steps):
            model.train_on_batch(images, labels)
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0],
                  "rb") as f:
            space.ParseFromString(f.read())
    seconds = collections.Counter()
    count = collections.Counter()
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "")
                node, _, op_type = name.rpartition(":")
                if not node or "::" in name or op_type != op_type.strip():
                    continue  # not a TensorFlow op (function, executor, thread events)
                phase = "backward" if "gradient" in node else "forward"
                seconds[(phase, op_type)] += event.duration_ps * 1e-12 / steps
                count[(phase, op_type)] += 1
    total = sum(seconds.values())
    return {
        "op_seconds_per_step": total,
        "share": {phase: sum(v for (p, _), v in seconds.items() if p == phase) / total
                  for phase in ("forward", "backward")},
        "op_types": [{"phase": phase, "op": op, "share": v / total,
                      "ops_per_step": count[(phase, op)] // steps}
                     for (phase, op), v in seconds.most_common(16)],
    }


def _model(tf, alpha):
    import numpy as np

    from components import features
    from components.model import build_model
    from components.model_config import ModelConfig

    model = build_model(ModelConfig(image_size=SIZE, alpha=alpha, weights="none"))
    model.compile(tf.keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    images = {features.TRANSFORMED_IMAGE_KEY:
              rng.random((BATCH, SIZE, SIZE, 1), np.float32)}
    labels = rng.integers(0, features.NUM_GRADES, BATCH)
    return model, images, labels


# -- layers -------------------------------------------------------------------------------

def _stage_layers(tf, alpha):
    """(name, input shape [H, W, C], stride, padding) of the first depthwise layer of each
    distinct (shape, stride) in MobileNetV2."""
    backbone = tf.keras.applications.MobileNetV2(
        input_shape=(SIZE, SIZE, 3), alpha=alpha, include_top=False, weights=None)
    seen, stages = set(), []
    for layer in backbone.layers:
        if isinstance(layer, tf.keras.layers.DepthwiseConv2D):
            key = (tuple(layer.input_shape[1:]), layer.strides[0])
            if key not in seen:
                seen.add(key)
                stages.append((layer.name, list(key[0]), key[1], layer.padding.upper()))
    return stages


def _layers(alpha: float, repeats: int) -> list:
    import numpy as np

    tf = _tensorflow()
    taps = depthwise_taps(tf)
    rng = np.random.default_rng(0)
    results = []
    for name, shape, stride, padding in _stage_layers(tf, alpha):
        x = tf.constant(rng.standard_normal([BATCH] + shape).astype(np.float32))
        kernel = tf.constant(rng.standard_normal((3, 3, shape[2], 1)).astype(np.float32))
        out = tf.nn.depthwise_conv2d(x, kernel, [1, stride, stride, 1], padding)
        dy = tf.constant(rng.standard_normal(out.shape).astype(np.float32))

        def gradients(conv):
            @tf.function
            def run():
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    tape.watch(kernel)
                    y = conv(x, kernel)
                return tape.gradient(y, [x, kernel], output_gradients=dy)
            return run

        native = gradients(lambda a, k: tf.nn.depthwise_conv2d(
            a, k, [1, stride, stride, 1], padding))
        variant = gradients(lambda a, k: taps(a, k, (stride, stride), padding))
        errors = [float(tf.reduce_max(tf.abs(g - r)) / tf.reduce_max(tf.abs(r)))
                  for g, r in zip(variant(), native())]
        times = {"native": [], "taps": []}
        for _ in range(repeats):  # interleaved; the minimum is the least disturbed run
            for key, fn in (("native", native), ("taps", variant)):
                start = time.perf_counter()
                [g.numpy() for g in fn()]
                times[key].append(time.perf_counter() - start)
        result = {"layer": name, "input_shape": shape, "stride": stride,
                  "input_gradient_relative_error": errors[0],
                  "filter_gradient_relative_error": errors[1],
                  "native_ms": 1e3 * min(times["native"]), "taps_ms": 1e3 * min(times["taps"]),
                  "speedup": min(times["native"]) / min(times["taps"])}
        logger.info("alpha %s %s %s/%d: native %.1f ms, taps %.1f ms (x%.2f), relative "
                    "error dx %.1e dk %.1e", alpha, name, shape, stride, result["native_ms"],
                    result["taps_ms"], result["speedup"], *errors)
        results.append(result)
    return results


# -- step ---------------------------------------------------------------------------------

def _use_unfused_batch_norm(tf, model):
    """Switches every BatchNormalization layer of `model` to Keras's non-fused path
    (moments and elementwise ops, differentiated op by op); returns how many changed."""
    changed = 0
    for layer in model.submodules:
        if isinstance(layer, tf.keras.layers.BatchNormalization) and layer.fused:
            layer.fused = False
            changed += 1
    return changed


def _save_reference_gradients(tf, alpha, path):
    """Backbone gradients of a seeded model on a seeded input (training-mode batch norm),
    saved to `path` (.npz), so processes with different settings can be compared."""
    import numpy as np

    tf.keras.utils.set_random_seed(0)
    backbone = _model(tf, alpha)[0].get_layer("backbone")
    rng = np.random.default_rng(1)
    rgb = tf.constant(rng.uniform(-1, 1, (BATCH, SIZE, SIZE, 3)).astype(np.float32))
    projection = tf.constant(rng.standard_normal(backbone.output_shape[1:]).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(backbone(rgb, training=True) * projection)
    grads = tape.gradient(loss, backbone.trainable_variables)
    np.savez(path, *[g.numpy() for g in grads])


def _gradient_difference(reference, other) -> dict:
    """How far gradient list `other` is from `reference` (same variables, numpy arrays).

    A per-variable relative error is meaningless for variables whose gradient is zero up to
    rounding (e.g. the beta of a batch norm whose output only reaches the next training-mode
    batch norm through linear ops), so the differences are relative to the whole gradient:
    `max_abs_relative` = largest |difference| / largest |reference gradient|, `l2_relative` =
    ||difference|| / ||reference|| over all variables.
    """
    import numpy as np

    largest = max(float(np.max(np.abs(r))) for r in reference)
    difference = sum(float(np.sum(np.square(o - r))) for o, r in zip(other, reference))
    norm = sum(float(np.sum(np.square(r))) for r in reference)
    return {"max_abs_relative": max(float(np.max(np.abs(o - r)))
                                    for o, r in zip(other, reference)) / largest,
            "l2_relative": (difference / norm) ** 0.5}


def _load_gradients(path):
    import numpy as np

    saved = np.load(path)
    return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def _step(alpha: float, variants, rounds: int, steps: int, grads_out=None) -> dict:
    """Images/s of each in-process variant, interleaved step blocks, per round."""
    import numpy as np

    tf = _tensorflow()
    runs = {}
    result = {variant: {} for variant in variants}
    if grads_out:
        _save_reference_gradients(tf, alpha, grads_out)
    for variant in variants:
        model, images, labels = _model(tf, alpha)
        if variant != "native":
            # Same weights, same input, training-mode batch norm: the gradient of a fixed
            # random projection of the backbone's output for every backbone weight.
            backbone = model.get_layer("backbone")
            rng = np.random.default_rng(1)
            rgb = tf.constant(rng.uniform(-1, 1, (BATCH, SIZE, SIZE, 3)).astype(np.float32))
            projection = tf.constant(
                rng.standard_normal(backbone.output_shape[1:]).astype(np.float32))

            def grads():
                with tf.GradientTape() as tape:
                    loss = tf.reduce_sum(backbone(rgb, training=True) * projection)
                return tape.gradient(loss, backbone.trainable_variables)

            reference = grads()
            result[variant]["layers_changed"] = (
                _use_taps(tf, model) if variant == "taps" else _use_unfused_batch_norm(tf, model))
            result[variant]["gradient_difference"] = _gradient_difference(
                [r.numpy() for r in reference], [g.numpy() for g in grads()])
        model.compile(tf.keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
        for _ in range(2):
            model.train_on_batch(images, labels)
        runs[variant] = (model, images, labels)
    for variant in variants:
        result[variant]["images_per_second"] = []
    for _ in range(rounds):
        for variant in variants:
            model, images, labels = runs[variant]
            start = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(images, labels)
            result[variant]["images_per_second"].append(
                steps * BATCH / (time.perf_counter() - start))
    return result


def _child(args_list, env=None) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    child = subprocess.run([sys.executable, __file__, "child"] + args_list, env=env,
                           capture_output=True, text=True, check=False)
    if child.returncode:
        raise RuntimeError(f"child {args_list} failed:\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("profile", "layers", "step", "child"))
    parser.add_argument("--alpha", type=float, action="append")
    parser.add_argument("--variant", action="append", choices=VARIANTS,
                        help="step variants; the first is the baseline (default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--grads_out", help=argparse.SUPPRESS)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    alphas = args.alpha or [0.35]
    if args.mode == "child":
        kind, alpha, variant = args.job.split(",")
        if kind == "profile":
            result = _profile(float(alpha))
        elif kind == "layers":
            result = _layers(float(alpha), args.repeats)
        else:
            result = _step(float(alpha), variant.split("+"), args.rounds, args.steps,
                           args.grads_out)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from components import atomic_dir

    payload = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
               "cpu_cores": len(os.sched_getaffinity(0)), "batch": BATCH, "image_size": SIZE,
               "load_average_start": os.getloadavg()[0], "mode": args.mode}
    out = args.out or os.path.join(REPO, "build", "benchmarks",
                                   f"depthwise_backprop_{args.mode}.json")
    if args.mode == "profile":
        payload["results"] = {}
        for alpha in alphas:
            result = _child(["--job", f"profile,{alpha},native"])
            payload["results"][str(alpha)] = result
            atomic_dir.write_json(out, payload)  # each width's profile as soon as it is done
            logger.info("alpha %s: op time per step %.2f s, backward %.0f %%", alpha,
                        result["op_seconds_per_step"], 100 * result["share"]["backward"])
            for row in result["op_types"]:
                logger.info("  %-8s %-40s %5.1f %%", row["phase"], row["op"],
                            100 * row["share"])
    elif args.mode == "layers":
        payload["repeats"] = args.repeats
        payload["results"] = {str(alpha): _child(["--job", f"layers,{alpha},native",
                                                  "--repeats", str(args.repeats)])
                              for alpha in alphas}
    else:
        variants = args.variant or ["native", "bn_unfused", "onednn"]
        if variants[0] != "native":
            parser.error("the first step variant must be native (the baseline)")
        payload.update(steps=args.steps, rounds=args.rounds, variants=variants)
        payload["results"] = {}
        for alpha in alphas:
            in_process = [v for v in variants if v != "onednn"]
            with tempfile.TemporaryDirectory() as tmp:
                reference = os.path.join(tmp, "reference.npz")
                result = _child(["--job", f"step,{alpha},{'+'.join(in_process)}",
                                 "--rounds", str(args.rounds), "--steps", str(args.steps),
                                 "--grads_out", reference], {"TF_ENABLE_ONEDNN_OPTS": "0"})
                if "onednn" in variants:  # a process setting: the next process, not interleaved
                    onednn = os.path.join(tmp, "onednn.npz")
                    result["onednn"] = _child(
                        ["--job", f"step,{alpha},native", "--rounds", str(args.rounds),
                         "--steps", str(args.steps), "--grads_out", onednn],
                        {"TF_ENABLE_ONEDNN_OPTS": "1"})["native"]
                    result["onednn"]["gradient_difference"] = _gradient_difference(
                        _load_gradients(reference), _load_gradients(onednn))
            native = result["native"]["images_per_second"]
            for variant in variants:
                rates = result[variant]["images_per_second"]
                if variant == "onednn":
                    ratios = [statistics.median(rates) / statistics.median(native)]
                else:  # same process, same round
                    ratios = [r / n for r, n in zip(rates, native)]
                result[variant]["ratio_to_native"] = ratios
                logger.info("alpha %s %-10s %s images/s, ratio to native %s%s", alpha,
                            variant, " ".join(f"{r:.1f}" for r in rates),
                            " ".join(f"{r:.2f}" for r in ratios),
                            "" if variant == "native" else
                            ", gradient difference max-abs %.1e, L2 %.1e" % tuple(
                                result[variant]["gradient_difference"].values()))
            payload["results"][str(alpha)] = result
    payload["load_average_end"] = os.getloadavg()[0]
    atomic_dir.write_json(out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
