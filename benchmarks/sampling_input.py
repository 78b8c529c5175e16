"""Benchmark: how fast the Trainer's two input pipelines deliver films, without training.

Class-balanced sampling (`model.class_balance: sampling`) trained at × 0.65 the images/s of
class weights on the idle machine (docs/model.md, round 11). This separates the input
pipeline from the train step: it builds the Trainer's own training dataset from a
Transform output (`components.train.datasets`), then iterates it as given (what
`class_balance: weights` trains on) and through `components.train.class_sampled_dataset`
(what `sampling` trains on), a few passes each, and prints each pass's images/s as a ratio
to the first plain pass measured in the same run. The sampled dataset fills its per-grade
in-memory caches on its first pass, so its first and later passes are reported apart.
Nothing trains: if the sampled input alone delivers many times what a train step consumes
(≈ 70 images/s here), the training slowdown comes from sharing the two cores, not from a
starved step.

    python benchmarks/sampling_input.py \\
        --examples build/tfx/Transform/transformed_examples/85 \\
        --transform-graph build/tfx/Transform/transform_graph/85

Writes build/benchmarks/sampling_input.json.
"""

import argparse
import datetime
import logging
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from components import features  # noqa: E402

features.select_keras_2()  # before TensorFlow is imported

logger = logging.getLogger("sampling_input")


def _passes(dataset, passes: int, label: str) -> list:
    """images/s of each full pass over `dataset` (one Python iterator per pass)."""
    rates = []
    for number in range(1, passes + 1):
        films, start = 0, time.perf_counter()
        for _, grades in dataset:
            films += int(grades.shape[0])
        seconds = time.perf_counter() - start
        rates.append({"pass": number, "films": films, "seconds": seconds,
                      "images_per_second": films / seconds})
        logger.info("%s pass %d: %d films in %.1f s, %.1f images/s", label, number, films,
                    seconds, films / seconds)
    return rates


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", required=True,
                        help="a Transform transformed_examples folder (Split-train/ inside)")
    parser.add_argument("--transform-graph", required=True,
                        help="the Transform transform_graph folder of the same run")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--class-weighting", default="sqrt", choices=("sqrt", "balanced"))
    parser.add_argument("--out", default=os.path.join(REPO, "build", "benchmarks",
                                                      "sampling_input.json"))
    args = parser.parse_args(argv)
    for folder in (os.path.join(args.examples, "Split-train"), args.transform_graph):
        if not os.path.isdir(folder):
            parser.error(f"not a folder: {folder}")
    if args.passes < 2:
        parser.error("--passes must be at least 2 (the sampled first pass fills caches)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import tensorflow_transform as tft

    from components import atomic_dir, train
    from components.model_config import ModelConfig

    config = ModelConfig(batch_size=args.batch, class_weighting=args.class_weighting,
                         class_balance="sampling")
    train_ds, _, _, counts = train.datasets(train.fn_args_for(args.examples),
                                            tft.TFTransformOutput(args.transform_graph),
                                            config)
    sampled = train.class_sampled_dataset(
        train_ds, counts, train.class_weights(counts, config.class_weighting),
        config.batch_size, config.seed)
    plain_rates = _passes(train_ds, args.passes, "plain")
    sampled_rates = _passes(sampled, args.passes, "sampled")
    baseline = plain_rates[0]["images_per_second"]
    for rate in plain_rates + sampled_rates:
        rate["ratio_to_baseline"] = rate["images_per_second"] / baseline
    logger.info("sampled / plain images/s: first pass x%.2f, later passes x%s",
                sampled_rates[0]["ratio_to_baseline"],
                ", x".join(f"{r['ratio_to_baseline']:.2f}" for r in sampled_rates[1:]))
    atomic_dir.write_json(args.out, {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu_cores": len(os.sched_getaffinity(0)), "batch": args.batch,
        "class_weighting": args.class_weighting, "training_films_per_grade": counts,
        "examples": os.path.abspath(args.examples),
        "baseline": "plain pass 1", "plain": plain_rates, "sampled": sampled_rates})
    return 0


if __name__ == "__main__":
    sys.exit(main())
