"""Data that breaks the schema stops the run before Transform, naming feature and split."""

import os

import pytest
import tensorflow as tf

from components import features, image_files, ingestion
from components.anomaly_gate import DataAnomalyError
from pipeline import configs, local_runner
from conftest import tiny_params


def _example(grade: int, side: bytes) -> bytes:
    png = tf.io.encode_png(tf.zeros([128, 128, 1], tf.uint8)).numpy()
    return ingestion.serialized_example(image_files.read_radiograph(png), grade=grade,
                                        patient="p1", side=side.decode(), source="x")


@pytest.mark.slow
def test_schema_anomaly_stops_the_run_with_a_readable_message(tmp_path):
    ingested = tmp_path / configs.INGESTED_DIR
    for split, records in ((features.TRAIN_SPLIT, [_example(g % 5, b"L") for g in range(10)]),
                           (features.EVAL_SPLIT, [_example(7, b"X"), _example(1, b"R")])):
        os.makedirs(ingested / split)
        with tf.io.TFRecordWriter(str(ingested / split / "data.tfrecord")) as writer:
            for record in records:
                writer.write(record)

    with pytest.raises(DataAnomalyError) as error:
        local_runner.run(tiny_params(), str(tmp_path))
    message = str(error.value)
    assert "split 'eval', feature 'grade'" in message
    assert "split 'eval', feature 'side'" in message
    assert "split 'train'" not in message
    assert not (tmp_path / configs.PIPELINE_ROOT / "Transform").exists()
    assert not (tmp_path / configs.SERVING_MODEL_DIR).exists()


def test_missing_ingested_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="koa ingest"):
        local_runner.run(tiny_params(), str(tmp_path))
