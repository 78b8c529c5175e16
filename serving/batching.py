"""Server-side dynamic batching of concurrent requests to the same signature.

Requests for the same (model version, signature, outputs) join an open batch
until it holds ``max_batch_size`` rows or its ``batch_timeout_micros`` has
passed and one of ``num_batch_threads`` workers is free; the worker
concatenates the inputs along the 0th dimension, runs the signature once and
hands every request its slice of each output. At most
``max_enqueued_batches`` batches may wait per queue; beyond that a request is
refused with UNAVAILABLE, as TensorFlow Serving does.
"""

import collections
import logging
import threading
import time

import grpc
import numpy as np

from serving import status
from serving.server_config import BatchingConfig

_LOG = logging.getLogger(__name__)


class _Task:
    __slots__ = ("inputs", "rows", "done", "outputs", "error")

    def __init__(self, inputs: dict, rows: int):
        self.inputs = inputs
        self.rows = rows
        # Held until the task is answered: one lock costs less per request than an Event.
        self.done = threading.Lock()
        self.done.acquire()  # pylint: disable=consider-using-with
        self.outputs = None
        self.error = None


class _Batch:
    __slots__ = ("key", "servable", "signature", "aliases", "tasks", "rows", "deadline", "closed")

    def __init__(self, key, servable, signature, aliases, deadline):
        self.key = key
        self.servable = servable
        self.signature = signature
        self.aliases = aliases
        self.tasks = []
        self.rows = 0
        self.deadline = deadline
        self.closed = False


class BatchScheduler:
    """Batches concurrent signature runs.

    Args:
        config: the batching parameters.
        metrics: a :class:`serving.metrics.ServerMetrics` to record batch sizes, or None.
    """

    def __init__(self, config: BatchingConfig, metrics=None):
        self.config = config
        self._metrics = metrics
        self._timeout = config.batch_timeout_micros / 1e6
        self._cond = threading.Condition()
        self._pending = collections.deque()  # batches in creation order
        self._open = {}  # key -> the batch still accepting tasks
        self._queued = collections.Counter()  # key -> batches waiting
        self._stopping = False
        self._flushing = False
        self._workers = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                         for i in range(config.num_batch_threads)]
        for worker in self._workers:
            worker.start()

    def run(self, servable, signature_name: str, inputs: dict, aliases: list) -> dict:
        """Runs one request's inputs as part of a batch and returns its outputs.

        Raises:
            status.ServingStatusError: the request is larger than a batch, the
                queue is full, or the batched run failed.
        """
        rows = next(iter(inputs.values())).shape[0]
        if rows > self.config.max_batch_size:
            raise status.invalid_argument(
                f"Task size {rows} is larger than maximum input batch size "
                f"{self.config.max_batch_size}")
        key = (id(servable), signature_name, tuple(aliases), tuple(sorted(inputs)),
               tuple((a, inputs[a].shape[1:], inputs[a].dtype.str) for a in sorted(inputs)))
        task = _Task(inputs, rows)
        with self._cond:
            if self._stopping:
                raise status.ServingStatusError(grpc.StatusCode.UNAVAILABLE, "Server is shutting down")
            batch = self._open.get(key)
            if batch is None or batch.closed or batch.rows + rows > self.config.max_batch_size:
                if batch is not None:
                    batch.closed = True
                if self._queued[key] >= self.config.max_enqueued_batches:
                    raise status.ServingStatusError(
                        grpc.StatusCode.UNAVAILABLE,
                        "The batch scheduling queue to which this task was submitted is full")
                batch = _Batch(key, servable, signature_name, list(aliases),
                               time.monotonic() + self._timeout)
                self._open[key] = batch
                self._queued[key] += 1
                self._pending.append(batch)
                wake = True  # a new deadline for the workers to wait for
            else:
                wake = False
            batch.tasks.append(task)
            batch.rows += rows
            if batch.rows >= self.config.max_batch_size:
                batch.closed = True
                wake = True
            # Joining a batch that is still open changes nothing a worker waits
            # for: no wake-up (one per request would cost more than it saves).
            if wake:
                self._cond.notify()
        task.done.acquire()
        if task.error is not None:
            raise task.error
        return task.outputs

    def queued_batches(self) -> int:
        """Returns how many batches are waiting for a worker."""
        with self._cond:
            return len(self._pending)

    def _next_batch(self):
        with self._cond:
            while True:
                now = time.monotonic()
                for batch in self._pending:
                    if batch.closed or batch.deadline <= now or self._flushing or self._stopping:
                        self._pending.remove(batch)
                        batch.closed = True
                        self._queued[batch.key] -= 1
                        if self._open.get(batch.key) is batch:
                            del self._open[batch.key]
                        return batch
                if self._stopping:
                    return None
                wait = min((b.deadline for b in self._pending), default=now + 1.0) - now
                self._cond.wait(max(wait, 0.0005))

    def _work(self):
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._execute(batch)

    def _padded_size(self, rows: int) -> int:
        for size in self.config.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows

    def _execute(self, batch: _Batch):
        tasks = batch.tasks
        try:
            names = list(tasks[0].inputs)
            merged = {name: np.concatenate([t.inputs[name] for t in tasks], axis=0) for name in names}
            padded = self._padded_size(batch.rows)
            if padded > batch.rows:
                # Pad with copies of the first row, as TensorFlow Serving does,
                # so the model only ever sees the allowed batch sizes.
                merged = {name: np.concatenate([a, np.repeat(a[:1], padded - batch.rows, axis=0)])
                          for name, a in merged.items()}
            if self._metrics is not None:
                self._metrics.observe_batch(batch.servable.name, batch.servable.version,
                                            batch.signature, padded)
            outputs = batch.servable.run(batch.signature, merged, batch.aliases)
            for alias, array in outputs.items():
                if array.ndim == 0 or array.shape[0] != padded:
                    raise status.ServingStatusError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"Batched output tensor '{alias}' has 0th dimension "
                        f"{array.shape[0] if array.ndim else 'none'}, expected {padded}")
            start = 0
            for task in tasks:
                task.outputs = {alias: array[start:start + task.rows] for alias, array in outputs.items()}
                start += task.rows
        except status.ServingStatusError as e:
            for task in tasks:
                task.error = e
        except Exception as e:  # boundary: a worker must answer every waiting request
            _LOG.exception("batched run of %s failed", batch.signature)
            error = status.ServingStatusError(grpc.StatusCode.INTERNAL, f"batched run failed: {e}")
            for task in tasks:
                task.error = error
        finally:
            for task in tasks:
                task.done.release()

    def flush(self):
        """From now on, runs every batch as soon as a worker is free (used at shutdown).

        New requests are still accepted, so that requests already in flight
        when the server began to shut down complete without waiting for a
        batch timeout.
        """
        with self._cond:
            self._flushing = True
            self._cond.notify_all()

    def stop(self):
        """Runs the batches already queued, then stops the workers."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for worker in self._workers:
            worker.join()
