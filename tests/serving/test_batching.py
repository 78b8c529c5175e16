"""Dynamic batching across concurrent calls, with a real SavedModel."""

import os
import threading
import time

import grpc
import numpy as np
import pytest

from serving.batching import BatchScheduler
from serving.server_config import BatchingConfig
from serving.metrics import ServerMetrics
from serving.servable import Servable
from serving.status import ServingStatusError
from serving_fixtures import png_bytes

OUTPUTS = ["grade", "probabilities"]


class RecordingServable:
    """A real servable that records the batch sizes it is run with."""

    def __init__(self, servable):
        self._servable = servable
        self.name, self.version = servable.name, servable.version
        self.batch_sizes = []

    def run(self, signature, inputs, aliases):
        self.batch_sizes.append(len(next(iter(inputs.values()))))
        return self._servable.run(signature, inputs, aliases)


@pytest.fixture(scope="module")
def servable(models_dir):
    return Servable("koa", 2, os.path.join(models_dir, "koa", "2"))


def _concurrently(scheduler, servable, requests):
    results, errors = [None] * len(requests), []

    def call(index, images):
        try:
            results[index] = scheduler.run(servable, "serving_default",
                                           {"image_bytes": np.array(images, dtype=object)}, OUTPUTS)
        except ServingStatusError as e:
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i, r)) for i, r in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def test_concurrent_requests_run_as_one_batch_and_get_their_own_rows(servable):
    recording = RecordingServable(servable)
    # A long timeout: the batch is run because it is full, not because time passed.
    scheduler = BatchScheduler(BatchingConfig(max_batch_size=6, batch_timeout_micros=60_000_000,
                                              num_batch_threads=1), ServerMetrics())
    requests = [[png_bytes(1)], [png_bytes(2), png_bytes(3)], [png_bytes(4), png_bytes(5), png_bytes(6)]]
    try:
        results, errors = _concurrently(scheduler, recording, requests)
    finally:
        scheduler.stop()

    assert errors == []
    assert recording.batch_sizes == [6]
    for images, result in zip(requests, results):
        alone = servable.run("serving_default", {"image_bytes": np.array(images, dtype=object)}, OUTPUTS)
        np.testing.assert_allclose(result["probabilities"], alone["probabilities"], rtol=1e-5)
        np.testing.assert_array_equal(result["grade"], alone["grade"])


def test_allowed_batch_sizes_pad_the_batch(servable):
    recording = RecordingServable(servable)
    scheduler = BatchScheduler(BatchingConfig(max_batch_size=4, batch_timeout_micros=0, num_batch_threads=1,
                                              allowed_batch_sizes=(2, 4)))
    try:
        results, errors = _concurrently(scheduler, recording, [[png_bytes(7)] * 3])
    finally:
        scheduler.stop()
    assert errors == [] and recording.batch_sizes == [4]
    assert results[0]["probabilities"].shape == (3, 5)


def test_task_larger_than_max_batch_size_is_rejected(servable):
    scheduler = BatchScheduler(BatchingConfig(max_batch_size=2, num_batch_threads=1))
    try:
        with pytest.raises(ServingStatusError) as info:
            scheduler.run(servable, "serving_default",
                          {"image_bytes": np.array([png_bytes(1)] * 3, dtype=object)}, OUTPUTS)
    finally:
        scheduler.stop()
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "larger than maximum input batch size 2" in info.value.message


def _wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_full_queue_is_unavailable(servable):
    gate, started = threading.Event(), threading.Event()

    class Blocking(RecordingServable):
        def run(self, signature, inputs, aliases):
            started.set()
            gate.wait()
            return super().run(signature, inputs, aliases)

    blocking = Blocking(servable)
    scheduler = BatchScheduler(BatchingConfig(max_batch_size=1, max_enqueued_batches=1, num_batch_threads=1))

    def request(seed):
        return threading.Thread(target=scheduler.run, args=(
            blocking, "serving_default", {"image_bytes": np.array([png_bytes(seed)], dtype=object)}, OUTPUTS))

    first, second = request(1), request(2)
    try:
        first.start()
        _wait_for(started.is_set)  # the only worker is busy with the first batch
        second.start()
        _wait_for(lambda: scheduler.queued_batches() == 1)  # the second waits in the queue
        with pytest.raises(ServingStatusError) as info:
            scheduler.run(blocking, "serving_default",
                          {"image_bytes": np.array([png_bytes(3)], dtype=object)}, OUTPUTS)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert "queue to which this task was submitted is full" in info.value.message
    finally:
        gate.set()
        first.join()
        second.join()
        scheduler.stop()
    assert blocking.batch_sizes == [1, 1]
