"""Model warmup: replaying recorded requests when a version loads (``--enable_model_warmup``).

A SavedModel may carry ``assets.extra/tf_serving_warmup_requests``, a TFRecord
file of ``tensorflow.serving.PredictionLog`` records (TensorFlow Serving's
format, so the same file warms both servers). Each record's request is run
against the freshly loaded version, ``num_request_iterations`` times, before
the version serves: the first client request then does not pay for tracing,
graph optimisation and allocator growth. Any failure (unreadable file, a
record that is not a PredictionLog, a request the model rejects, more than
:data:`MAX_RECORDS` records) fails the version's load, as upstream; so does a
warmup file that is not a regular file (a named pipe would block the reader
forever), refused without being opened.

:func:`write_warmup_requests` writes such a file (used by the Pusher).
"""

import logging
import os
import time

import grpc

from serving import status

_LOG = logging.getLogger(__name__)

ASSETS_EXTRA_DIR = "assets.extra"
REQUESTS_FILE_NAME = "tf_serving_warmup_requests"
MAX_RECORDS = 1000  # TensorFlow Serving's limit (WarmupConsts::kMaxNumRecords)


class WarmupError(RuntimeError):
    """Warmup of a version failed; the version does not serve.

    Attributes:
        code: canonical status code reported in GetModelStatus.
    """

    def __init__(self, message: str, code: grpc.StatusCode):
        super().__init__(message)
        self.code = code


def warmup_path(export_dir: str) -> str:
    """The warmup file's path inside a SavedModel directory."""
    return os.path.join(export_dir, ASSETS_EXTRA_DIR, REQUESTS_FILE_NAME)


def _prediction_log_pb2():
    from serving import protos  # pylint: disable=import-outside-toplevel

    protos.load()  # makes the tensorflow_serving.apis modules importable without the runtime
    from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=import-outside-toplevel
    return prediction_log_pb2


class _OneServable:
    """Resolves every ModelSpec to the version being warmed up (it is not yet published)."""

    def __init__(self, servable):
        self._servable = servable

    def resolve(self, model_spec):
        """Returns the version being warmed up, whatever the spec names."""
        del model_spec
        return self._servable


def _records(path: str):
    """Yields the raw records of a TFRecord file.

    Raises:
        WarmupError: DATA_LOSS when the file is not in TFRecord format.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    try:
        for record in tf.data.TFRecordDataset(path):
            yield record.numpy()
    except tf.errors.OpError as e:
        code = status.code_from_number(e.error_code)
        suffix = ". Please verify your warmup data is in TFRecord format." if code == grpc.StatusCode.DATA_LOSS else ""
        raise WarmupError(f"{e.message}{suffix}", code) from e


def run_warmup(servable, num_request_iterations: int = 1) -> int:
    """Replays a version's warmup requests against it.

    Args:
        servable: the loaded :class:`serving.servable.Servable` (its ``path``
            is the SavedModel directory).
        num_request_iterations: times each record is run; values < 1 mean 1.

    Returns:
        The number of records replayed (0 when the SavedModel has no warmup file).

    Raises:
        WarmupError: the file is not a regular file (FAILED_PRECONDITION),
            cannot be read or parsed, holds more than
            :data:`MAX_RECORDS` records or an unsupported log type, or a
            request fails (its status code is kept).
    """
    from serving.prediction import ApiHandler  # pylint: disable=import-outside-toplevel

    from serving.servable import regular_file_problem  # pylint: disable=import-outside-toplevel

    path = warmup_path(servable.path)
    if not os.path.exists(path):
        _LOG.info("No warmup data file found at %s", path)
        return 0
    # TensorFlow's reader would block forever on a named pipe: check before it opens.
    problem = regular_file_problem(path)
    if problem is not None:
        raise WarmupError(problem, grpc.StatusCode.FAILED_PRECONDITION)
    iterations = max(1, num_request_iterations)
    pb2 = _prediction_log_pb2()
    handler = ApiHandler(_OneServable(servable))
    def named(request):
        # Upstream runs warmup records on the version directly, whatever (or
        # whether) their ModelSpec names; the handler needs one.
        if not request.HasField("model_spec"):
            request.model_spec.name = servable.name
        return request

    runners = {
        "predict_log": lambda log: handler.predict(named(log.predict_log.request), api="warmup"),
        "classify_log": lambda log: handler.classify(named(log.classify_log.request), api="warmup"),
        "regress_log": lambda log: handler.regress(named(log.regress_log.request), api="warmup"),
        "multi_inference_log": lambda log: handler.multi_inference(log.multi_inference_log.request,
                                                                   api="warmup"),
    }
    started = time.monotonic()
    count = 0
    for record in _records(path):
        log = pb2.PredictionLog()
        try:
            log.ParseFromString(record)
        except Exception as e:  # protobuf's DecodeError and friends
            raise WarmupError(f"Failed to parse warmup record from {path}: {e}",
                              grpc.StatusCode.INVALID_ARGUMENT) from e
        kind = log.WhichOneof("log_type")
        runner = runners.get(kind)
        if runner is None:
            raise WarmupError(f"Unsupported log_type for warmup: {kind}", grpc.StatusCode.UNIMPLEMENTED)
        for _ in range(iterations):
            try:
                runner(log)
            except status.ServingStatusError as e:
                raise WarmupError(f"Warmup request {count} ({kind}) failed: {e.message}", e.code) from e
        count += 1
        if count > MAX_RECORDS:
            raise WarmupError(f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}",
                              grpc.StatusCode.INVALID_ARGUMENT)
    _LOG.info("Finished reading warmup data for model at %s. Number of warmup records read: %d. "
              "Elapsed time (microseconds): %d.", path, count, (time.monotonic() - started) * 1e6)
    return count


def write_warmup_requests(export_dir: str, predict_requests: list) -> str:
    """Writes PredictRequests as a SavedModel's warmup file (TFRecord of PredictionLog).

    Args:
        export_dir: the SavedModel directory.
        predict_requests: ``tensorflow.serving.PredictRequest`` messages.

    Returns:
        The file's path.

    Raises:
        ValueError: no requests, or more than :data:`MAX_RECORDS`.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    if not predict_requests or len(predict_requests) > MAX_RECORDS:
        raise ValueError(f"a warmup file holds 1 to {MAX_RECORDS} requests, got {len(predict_requests)}")
    pb2 = _prediction_log_pb2()
    path = warmup_path(export_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = path + ".partial"
    with tf.io.TFRecordWriter(partial) as writer:
        for request in predict_requests:
            log = pb2.PredictionLog()
            log.predict_log.request.CopyFrom(request)
            writer.write(log.SerializeToString())
    os.replace(partial, path)
    return path
