"""The gRPC client the web UI and integrators use to grade knee radiographs.

It speaks the TensorFlow Serving API, so it works unchanged against the
project's server (``python -m serving``) and against ``tensorflow_model_server``.
It never imports TensorFlow (see :mod:`serving.protos`).

Example:
    >>> with ServingClient("localhost:8500") as client:
    ...     prediction = client.predict(open("knee.png", "rb").read(), explain=True)
    ...     print(prediction.grade, prediction.grade_name, prediction.confidence)
"""

import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import grpc
import numpy as np

from components import features
from serving import protos, tensors

_LOG = logging.getLogger(__name__)

# Large heatmaps for big batches exceed gRPC's 4 MB default receive limit.
_MAX_RECEIVE_BYTES = 256 * 1024 * 1024
_BACKOFF_START_SECONDS = 0.1
_BACKOFF_MAX_SECONDS = 2.0

_STATE_NAMES = {0: "UNKNOWN", 10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING", 50: "END"}


class ServingError(Exception):
    """A call to the model server failed; the message says what and where."""


class ModelUnavailableError(ServingError):
    """The server could not be reached or did not answer in time (after retries)."""


class ModelNotFoundError(ServingError):
    """The server does not serve the requested model or version."""


class InvalidInputError(ServingError):
    """The server rejected the input (for example, bytes that are not an image)."""


@dataclass(frozen=True)
class ServedPrediction:
    """A KL grade predicted for one radiograph.

    Attributes:
        grade: predicted Kellgren-Lawrence grade, 0..4.
        grade_name: the grade's name (``components.features.GRADE_NAMES``).
        probabilities: probability of each grade, index == grade.
        expected_grade: sum of grade * probability.
        confidence: probability of the predicted grade.
        model_name: name of the model that answered.
        model_version: version of the model that answered (from the response).
        heatmap: float32 [H, W] in [0, 1] when an explanation was asked for.
        out_of_distribution: the model flags the image as unlike the knee
            radiographs it was trained on; its grade must not be used. False
            when the model has no such check (models exported before it).
        ood_score: the model's out-of-distribution score (> 1 is flagged), or
            None when the model has no such check.
        ood_reason: the codes of the model's failed input checks joined by ","
            (``components.features.OOD_REASONS``), "" when none failed or the
            model has no reason output (models exported before it).
    """

    grade: int
    grade_name: str
    probabilities: tuple
    expected_grade: float
    confidence: float
    model_name: str
    model_version: int
    heatmap: Optional[np.ndarray] = field(default=None, compare=False)
    out_of_distribution: bool = False
    ood_score: Optional[float] = None
    ood_reason: str = ""


@dataclass(frozen=True)
class ModelVersionStatus:
    """State of one model version as reported by ``ModelService.GetModelStatus``.

    Attributes:
        version: the version number.
        state: ``START``, ``LOADING``, ``AVAILABLE``, ``UNLOADING`` or ``END``.
        error: the load or unload error, empty when there is none.
    """

    version: int
    state: str
    error: str


def _optional_rows(outputs, key, count, where):
    """Returns output ``key`` as a length-``count`` vector, or None when absent.

    Raises:
        ServingError: the output is present but not one value per image.
    """
    if key not in outputs:
        return None
    values = np.asarray(outputs[key])
    if values.shape != (count,):
        raise ServingError(f"{where} returned {key} of shape {values.shape}, expected {(count,)}")
    return values


def _text(value) -> str:
    """A string tensor element (bytes from the server) as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class ServingClient:
    """A connection to a TensorFlow Serving compatible server for one model.

    One gRPC channel is opened per client and reused by every call; the client
    is thread-safe.

    Args:
        target: ``host:port`` of the server's gRPC endpoint.
        model_name: the served model's name.
        timeout: deadline of each attempt, seconds.
        retries: extra attempts after an UNAVAILABLE answer, with exponential
            backoff; no other failure is retried.
    """

    def __init__(self, target="localhost:8500", model_name="koa", *, timeout=10.0, retries=3):
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.target = target
        self.model_name = model_name
        self.timeout = float(timeout)
        self.retries = int(retries)
        self._protos = protos.load()
        self._channel = grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", _MAX_RECEIVE_BYTES)])
        self._prediction = self._protos.prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = self._protos.model_service_pb2_grpc.ModelServiceStub(self._channel)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        """Closes the channel; the client cannot be used afterwards."""
        self._channel.close()

    def predict(self, image_bytes: bytes, *, explain=False, version=None) -> ServedPrediction:
        """Grades one radiograph.

        Args:
            image_bytes: the encoded PNG or JPEG file.
            explain: also return the Grad-CAM heatmap (uses the ``gradcam`` signature).
            version: a specific model version; the latest available by default.

        Returns:
            The prediction.

        Raises:
            InvalidInputError, ModelNotFoundError, ModelUnavailableError, ServingError.
        """
        signature = features.GRADCAM_SIGNATURE if explain else features.SERVING_SIGNATURE
        return self._predict([image_bytes], signature, version)[0]

    def predict_many(self, images: list, *, version=None) -> list:
        """Grades several radiographs in one batched Predict call.

        Args:
            images: encoded PNG or JPEG files.
            version: a specific model version; the latest available by default.

        Returns:
            One prediction per image, in order.
        """
        if not images:
            return []
        return self._predict(list(images), features.SERVING_SIGNATURE, version)

    def model_status(self) -> list:
        """Returns the state of every version of the model the server knows."""
        request = self._protos.get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        response = self._call(self._models.GetModelStatus, request, "GetModelStatus")
        return [
            ModelVersionStatus(
                version=int(status.version),
                state=_STATE_NAMES.get(status.state, str(status.state)),
                error=status.status.error_message)
            for status in response.model_version_status
        ]

    def _predict(self, images, signature, version):
        for index, image in enumerate(images):
            if not isinstance(image, (bytes, bytearray, memoryview)):
                raise TypeError(f"image {index} must be bytes, got {type(image).__name__}")
        request = self._protos.predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = int(version)
        request.inputs[features.SERVING_INPUT].CopyFrom(
            tensors.to_tensor_proto(np.array([bytes(i) for i in images], dtype=object),
                                    self._protos.tensor_pb2.TensorProto, tensors.DT_STRING))
        response = self._call(self._prediction.Predict, request, f"Predict (signature '{signature}')")
        return self._parse_predictions(response, len(images), signature)

    def _parse_predictions(self, response, count, signature):
        where = f"model '{self.model_name}' at {self.target}"
        try:
            outputs = {key: tensors.to_ndarray(value) for key, value in response.outputs.items()}
        except tensors.TensorConversionError as e:
            raise ServingError(f"{where} returned an undecodable output: {e}") from e
        needed = [features.PROBABILITIES_OUTPUT, features.GRADE_OUTPUT, features.EXPECTED_GRADE_OUTPUT]
        if signature == features.GRADCAM_SIGNATURE:
            needed.append(features.HEATMAP_OUTPUT)
        missing = [key for key in needed if key not in outputs]
        if missing:
            raise ServingError(f"{where} returned no {missing} output(s); got {sorted(outputs)}")
        probabilities = outputs[features.PROBABILITIES_OUTPUT]
        if probabilities.shape != (count, features.NUM_GRADES):
            raise ServingError(
                f"{where} returned probabilities of shape {probabilities.shape}, "
                f"expected {(count, features.NUM_GRADES)}")
        heatmaps = outputs.get(features.HEATMAP_OUTPUT) if signature == features.GRADCAM_SIGNATURE else None
        # Optional outputs: older models lack them, which means "not checked".
        ood_scores = _optional_rows(outputs, features.OOD_SCORE_OUTPUT, count, where)
        ood_flags = _optional_rows(outputs, features.OOD_FLAG_OUTPUT, count, where)
        ood_reasons = _optional_rows(outputs, features.OOD_REASON_OUTPUT, count, where)
        model_name = response.model_spec.name or self.model_name
        model_version = int(response.model_spec.version.value)
        predictions = []
        for row in range(count):
            grade = int(outputs[features.GRADE_OUTPUT][row])
            if not 0 <= grade < features.NUM_GRADES:
                raise ServingError(f"{where} returned grade {grade}, outside 0..{features.NUM_GRADES - 1}")
            probs = tuple(float(p) for p in probabilities[row])
            predictions.append(ServedPrediction(
                grade=grade,
                grade_name=features.GRADE_NAMES[grade],
                probabilities=probs,
                expected_grade=float(outputs[features.EXPECTED_GRADE_OUTPUT][row]),
                confidence=probs[grade],
                model_name=model_name,
                model_version=model_version,
                heatmap=None if heatmaps is None else np.asarray(heatmaps[row], dtype=np.float32),
                out_of_distribution=False if ood_flags is None else bool(ood_flags[row]),
                ood_score=None if ood_scores is None else float(ood_scores[row]),
                ood_reason="" if ood_reasons is None else _text(ood_reasons[row])))
        return predictions

    def _call(self, method, request, what):
        """Calls one RPC with a deadline, retrying UNAVAILABLE with backoff."""
        where = f"{what} on model '{self.model_name}' at {self.target}"
        delay = _BACKOFF_START_SECONDS
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as e:
                code, details = e.code(), e.details()
                if code == grpc.StatusCode.UNAVAILABLE and attempt < attempts:
                    _LOG.warning("%s: server unavailable (%s), retry %d/%d in %.1fs",
                                 where, details, attempt, self.retries, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, _BACKOFF_MAX_SECONDS)
                    continue
                message = f"{where} failed: {code.name}: {details}"
                if code == grpc.StatusCode.UNAVAILABLE:
                    raise ModelUnavailableError(f"{message} (after {attempts} attempts)") from e
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise ModelUnavailableError(f"{message} (deadline {self.timeout:g}s)") from e
                if code == grpc.StatusCode.NOT_FOUND:
                    raise ModelNotFoundError(message) from e
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise InvalidInputError(message) from e
                raise ServingError(message) from e
        raise AssertionError("unreachable: the retry loop always returns or raises")
