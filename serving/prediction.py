"""The TensorFlow Serving API calls, independent of transport.

gRPC (:mod:`serving.grpc_service`) and REST (:mod:`serving.rest`) both turn
their requests into the API's protobuf messages and call :class:`ApiHandler`,
so validation, error codes and messages are identical on both, and worded as
TensorFlow Serving words them.
"""

import dataclasses
import logging
import time
from typing import Callable

import grpc
import numpy as np

from serving import protos, servable as servable_lib, status, tensors

_LOG = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
SIGNATURE_DEF_FIELD = "signature_def"
CLASSIFY_INPUTS = "inputs"
CLASSIFY_CLASSES = "classes"
CLASSIFY_SCORES = "scores"
REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"


def _keys(mapping) -> str:
    return ",".join(sorted(mapping))


def _shape_debug(array) -> str:
    """A shape as TensorFlow's TensorShape::DebugString prints it, e.g. ``[3,1]``."""
    return "[" + ",".join(str(d) for d in array.shape) + "]"


def _dtype_enum_name(array) -> str:
    """The DataType enum name of an output array, e.g. ``DT_INT64``."""
    if array.dtype == object:
        return "DT_STRING"
    try:
        return "DT_" + tensors.dtype_name(tensors.dtype_of(array)).upper()
    except tensors.TensorConversionError:
        return str(array.dtype)


def _require_model_spec(request):
    """TF Serving refuses a request without a ModelSpec before anything else."""
    if not request.HasField("model_spec"):
        raise status.invalid_argument("Missing ModelSpec")


def _require_method_and_one_input(signature, kind: str, method: str) -> None:
    """TF Serving's first two checks of a Classify/Regress signature, with its texts."""
    if signature.method_name != method:
        raise status.invalid_argument(
            f"Expected {kind} signature method_name to be {method}. "
            f"Was: {signature.method_name}")
    if len(signature.inputs) != 1:
        raise status.invalid_argument("Expected one input Tensor.")


def _classification_outputs(signature) -> list:
    """Checks a signature for Classify as TF Serving does; returns its output aliases."""
    _require_method_and_one_input(signature, "classification", servable_lib.CLASSIFY_METHOD)
    if len(signature.outputs) not in (1, 2):
        raise status.invalid_argument(
            f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if CLASSIFY_INPUTS not in signature.inputs:
        raise status.ServingStatusError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"No classification inputs found in SignatureDef: {signature}")
    aliases = [a for a in (CLASSIFY_CLASSES, CLASSIFY_SCORES) if a in signature.outputs]
    if not aliases:
        raise status.ServingStatusError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"Expected classification signature outputs to contain at least one of "
            f"\"{CLASSIFY_CLASSES}\" or \"{CLASSIFY_SCORES}\". Signature was: {signature}")
    return aliases


def _regression_outputs(signature) -> list:
    """Checks a signature for Regress as TF Serving does; returns its output alias."""
    _require_method_and_one_input(signature, "regression", servable_lib.REGRESS_METHOD)
    if len(signature.outputs) != 1:
        raise status.invalid_argument("Expected one output Tensor.")
    if REGRESS_INPUTS not in signature.inputs:
        raise status.ServingStatusError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"No regression inputs found in SignatureDef: {signature}")
    if REGRESS_OUTPUTS not in signature.outputs:
        raise status.ServingStatusError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"No regression outputs found in SignatureDef: {signature}")
    return [REGRESS_OUTPUTS]


def _fill_classifications(result, outputs, count):
    """Fills a ClassificationResult from `classes` [N, K] string and/or `scores` [N, K]
    float32 outputs, checked as TF Serving checks them."""
    classes = outputs.get(CLASSIFY_CLASSES)
    scores = outputs.get(CLASSIFY_SCORES)
    if classes is not None and classes.dtype != object:
        raise status.invalid_argument(
            f"Expected classes Tensor of DT_STRING.  Got: {_dtype_enum_name(classes)}")
    if scores is not None and scores.dtype != np.float32:
        raise status.invalid_argument(
            f"Expected scores Tensor of DT_FLOAT.  Got: {_dtype_enum_name(scores)}")
    for array in (classes, scores):
        if array is None:
            continue
        if array.ndim != 2:
            raise status.invalid_argument(
                f"Expected Tensor shape: [batch_size num_classes] but got {_shape_debug(array)}")
        if array.shape[0] != count:
            raise status.invalid_argument(
                f"Input batch size did not match output batch size: {count} vs. {array.shape[0]}")
    if classes is not None and scores is not None and classes.shape != scores.shape:
        raise status.invalid_argument(
            f"Tensors class and score should match in shape: {_shape_debug(classes)} vs. "
            f"{_shape_debug(scores)}")
    width = (classes if classes is not None else scores).shape[1]
    for row in range(count):
        classifications = result.classifications.add()
        for col in range(width):
            entry = classifications.classes.add()
            if classes is not None:
                entry.label = bytes(classes[row, col]).decode("utf-8", "replace")
            if scores is not None:
                entry.score = float(scores[row, col])


def _fill_regressions(result, outputs, count):
    """Fills a RegressionResult from the float32 `outputs` output, [N] or [N, 1]."""
    output = outputs[REGRESS_OUTPUTS]
    if not (output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1)):
        raise status.invalid_argument(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            f"{_shape_debug(output)}")
    if output.shape[0] != count:
        raise status.invalid_argument(
            f"Input batch size did not match output batch size: {count} vs. {output.shape[0]}")
    if output.dtype != np.float32:
        raise status.invalid_argument(
            f"Expected output Tensor of DT_FLOAT.  Got: {_dtype_enum_name(output)}")
    for value in output.reshape(-1):
        result.regressions.add().value = float(value)


@dataclasses.dataclass(frozen=True)
class _ExampleMethod:
    """How Classify or Regress runs a signature on tf.Examples and fills its result."""

    api_method: str  # the method label in the metrics
    input_alias: str
    output_aliases: Callable  # SignatureDef -> output aliases, or raises as TF Serving does
    fill: Callable  # (result proto, outputs by alias, number of examples) -> None
    result_field: str  # the InferenceResult field that holds the result


_EXAMPLE_METHODS = {
    servable_lib.CLASSIFY_METHOD: _ExampleMethod(
        "classify", CLASSIFY_INPUTS, _classification_outputs, _fill_classifications,
        "classification_result"),
    servable_lib.REGRESS_METHOD: _ExampleMethod(
        "regress", REGRESS_INPUTS, _regression_outputs, _fill_regressions, "regression_result"),
}


class _Observation:
    """Context of one API request: counts it as in flight, then records its status
    code and latency (a plain class: cheaper per request than a generator-based
    context manager). Set :attr:`version` once the version is resolved."""

    __slots__ = ("_metrics", "_labels", "_started", "version")

    def __init__(self, metrics, model: str, signature_name: str, api: str, method: str):
        self._metrics = metrics
        self._labels = (model, signature_name, api, method)
        self.version = ""

    def __enter__(self):
        self._started = time.perf_counter()
        if self._metrics is not None:
            self._metrics.request_started()
        return self

    def __exit__(self, exc_type, exc, traceback):
        if self._metrics is not None:
            if exc is None:
                code = grpc.StatusCode.OK
            elif isinstance(exc, status.ServingStatusError):
                code = exc.code
            else:  # a server bug: both transports answer it INTERNAL
                code = grpc.StatusCode.INTERNAL
            model, signature_name, api, method = self._labels
            self._metrics.observe_request(model, self.version, signature_name, api, method, code.name,
                                          time.perf_counter() - self._started)
        return False


class ApiHandler:
    """Implements Predict, Classify, Regress, MultiInference, GetModelMetadata and
    GetModelStatus.

    Args:
        manager: the :class:`serving.model_manager.ModelManager`.
        batcher: a :class:`serving.batching.BatchScheduler`, or None to run
            each request on its own.
        metrics: a :class:`serving.metrics.ServerMetrics`, or None.
    """

    def __init__(self, manager, batcher=None, metrics=None):
        self._manager = manager
        self._batcher = batcher
        self._metrics = metrics
        self._p = protos.load()

    def _observed(self, spec, signature_name: str, api: str, method: str) -> "_Observation":
        """Counts and times one request in the metrics, by the status it ends with."""
        return _Observation(self._metrics, spec.name, signature_name, api, method)

    def _resolve(self, spec, signature_name, served, not_found: Callable[[], Exception]):
        """The servable `spec` names and its signature; raises `not_found()` without one
        (Predict and Classify word that error differently, as TF Serving does)."""
        servable = self._manager.resolve(spec)
        served.version = servable.version
        signature = servable.signature_defs.get(signature_name)
        if signature is None:
            raise not_found()
        return servable, signature

    # -- Predict -----------------------------------------------------------

    def predict(self, request, api: str = "grpc"):
        """Runs a PredictRequest and returns a PredictResponse.

        Raises:
            status.ServingStatusError: with TensorFlow Serving's code and text.
        """
        _require_model_spec(request)
        spec = request.model_spec
        signature_name = spec.signature_name or DEFAULT_SIGNATURE
        with self._observed(spec, signature_name, api, "predict") as served:
            servable, signature = self._resolve(
                spec, signature_name, served, lambda: status.ServingStatusError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"Serving signature key \"{signature_name}\" not found."))
            if signature.method_name not in (servable_lib.PREDICT_METHOD, servable_lib.CLASSIFY_METHOD,
                                             servable_lib.REGRESS_METHOD):
                raise status.ServingStatusError(
                    grpc.StatusCode.INTERNAL,
                    "Expected prediction signature method_name to be one of "
                    f"{{{servable_lib.PREDICT_METHOD}, {servable_lib.CLASSIFY_METHOD}, "
                    f"{servable_lib.REGRESS_METHOD}}}. Was: {signature.method_name}")
            inputs = self._predict_inputs(signature, request)
            aliases = self._output_aliases(signature, request.output_filter)
            outputs = self._run(servable, signature_name, inputs, aliases)
            response = self._p.predict_pb2.PredictResponse()
            response_spec = response.model_spec
            response_spec.name = spec.name
            response_spec.version.value = servable.version
            response_spec.signature_name = signature_name
            response_outputs, dtypes = response.outputs, servable.output_dtypes[signature_name]
            for alias in aliases:
                tensors.fill_tensor_proto(response_outputs[alias], outputs[alias], dtypes[alias],
                                          as_content=False)
            return response

    def _predict_inputs(self, signature, request) -> dict:
        if len(request.inputs) != len(signature.inputs):
            sent, wanted = set(request.inputs), set(signature.inputs)
            raise status.invalid_argument(
                f"input size does not match signature: {len(sent)}!={len(wanted)} "
                f"len({{{_keys(sent)}}}) != len({{{_keys(wanted)}}}). "
                f"Sent extra: {{{_keys(sent - wanted)}}}. Missing but required: {{{_keys(wanted - sent)}}}.")
        inputs = {}
        for index, alias in enumerate(sorted(request.inputs)):
            info = signature.inputs.get(alias)
            if info is None:
                raise status.invalid_argument(
                    f"input tensor alias not found in signature: {alias}. "
                    f"Inputs expected to be in the set {{{_keys(signature.inputs)}}}.")
            proto = request.inputs[alias]
            try:
                array = tensors.to_ndarray(proto)
            except tensors.TensorConversionError as e:
                raise status.invalid_argument(f"tensor parsing error: {alias}") from e
            if proto.dtype != info.dtype:
                raise status.invalid_argument(
                    f"Expects arg[{index}] to be {tensors.dtype_name(info.dtype)} but "
                    f"{tensors.dtype_name(proto.dtype)} is provided")
            # No check against the SignatureDef's static shape: TensorFlow
            # decides whether the graph accepts the tensor, as in TF Serving.
            inputs[alias] = array
        return inputs

    @staticmethod
    def _output_aliases(signature, output_filter) -> list:
        if not output_filter:
            return sorted(signature.outputs)
        seen = []
        for alias in output_filter:
            if alias not in signature.outputs:
                raise status.invalid_argument(
                    f"output tensor alias not found in signature: {alias} "
                    f"Outputs expected to be in the set {{{_keys(signature.outputs)}}}.")
            if alias in seen:
                raise status.invalid_argument(f"duplicate output tensor alias: {alias}")
            seen.append(alias)
        return seen

    def _run(self, servable, signature_name, inputs, aliases) -> dict:
        # Only inputs that share one leading (batch) dimension can join a batch.
        if (self._batcher is not None and inputs
                and all(a.ndim >= 1 for a in inputs.values())
                and len({a.shape[0] for a in inputs.values()}) == 1):
            return self._batcher.run(servable, signature_name, inputs, aliases)
        return servable.run(signature_name, inputs, aliases)

    # -- Classify, Regress and MultiInference (tf.Example inputs) -------------

    def _serialized_examples(self, input_proto) -> np.ndarray:
        """The request's tf.Examples, serialized, as a [N] string array; each example
        of an ``example_list_with_context`` gets the context's features first."""
        kind = input_proto.WhichOneof("kind")
        if kind == "example_list":
            examples = list(input_proto.example_list.examples)
            context = None
        elif kind == "example_list_with_context":
            examples = list(input_proto.example_list_with_context.examples)
            context = input_proto.example_list_with_context.context
        else:
            raise status.invalid_argument("Input is empty.")
        if not examples:
            raise status.invalid_argument("Input is empty.")
        serialized = np.empty(len(examples), dtype=object)
        for index, example in enumerate(examples):
            if context is not None:
                merged = self._p.example_pb2.Example()
                merged.CopyFrom(context)
                merged.MergeFrom(example)
                example = merged
            serialized[index] = example.SerializeToString()
        return serialized

    def _example_signature(self, servable, signature_name):
        signature = servable.signature_defs.get(signature_name)
        if signature is None:
            raise status.invalid_argument(f"No signature was found with the name: {signature_name}")
        return signature

    def _fill_spec(self, target, spec, signature_name, servable):
        target.name = spec.name
        target.version.value = servable.version
        target.signature_name = signature_name

    def _run_examples(self, request, api: str, method: str, response):
        """Classify or Regress: runs the request's tf.Examples through the signature
        its ModelSpec names and fills `response` (a Classification/RegressionResponse).

        Raises:
            status.ServingStatusError: with TensorFlow Serving's code and text.
        """
        _require_model_spec(request)
        kind = _EXAMPLE_METHODS[method]
        spec = request.model_spec
        signature_name = spec.signature_name or DEFAULT_SIGNATURE
        with self._observed(spec, signature_name, api, kind.api_method) as served:
            servable = self._manager.resolve(spec)
            served.version = servable.version
            signature = self._example_signature(servable, signature_name)
            aliases = kind.output_aliases(signature)
            examples = self._serialized_examples(request.input)
            outputs = self._run(servable, signature_name, {kind.input_alias: examples}, aliases)
            self._fill_spec(response.model_spec, spec, signature_name, servable)
            kind.fill(response.result, outputs, len(examples))
            return response

    def classify(self, request, api: str = "grpc"):
        """Runs a ClassificationRequest and returns a ClassificationResponse.

        Raises:
            status.ServingStatusError: with TensorFlow Serving's code and text.
        """
        return self._run_examples(request, api, servable_lib.CLASSIFY_METHOD,
                                  self._p.classification_pb2.ClassificationResponse())

    def regress(self, request, api: str = "grpc"):
        """Runs a RegressionRequest and returns a RegressionResponse.

        Raises:
            status.ServingStatusError: with TensorFlow Serving's code and text.
        """
        return self._run_examples(request, api, servable_lib.REGRESS_METHOD,
                                  self._p.regression_pb2.RegressionResponse())

    def multi_inference(self, request, api: str = "grpc"):
        """Runs a MultiInferenceRequest: classify and regress tasks of one model over
        the same tf.Examples; returns a MultiInferenceResponse, one result per task.

        Raises:
            status.ServingStatusError: with TensorFlow Serving's code and text.
        """
        spec = request.tasks[0].model_spec if request.tasks else self._p.model_pb2.ModelSpec()
        with self._observed(spec, "", api, "multi_inference") as served:
            servable = self._manager.resolve(spec)
            served.version = servable.version
            plan, input_tensor, seen = [], None, set()
            for task in request.tasks:
                if not task.model_spec.name:
                    raise status.invalid_argument("Found ModelSpec with an empty model name.")
                if task.model_spec.name != spec.name:
                    raise status.invalid_argument(
                        "All ModelSpecs in a MultiInferenceRequest must access the same model name.")
                signature_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
                if signature_name in seen:
                    raise status.invalid_argument(f"Duplicate evaluation of signature: {signature_name}")
                seen.add(signature_name)
                signature = servable.signature_defs.get(signature_name)
                if signature is None:
                    raise status.invalid_argument(
                        f"Requested signature not found in model graph: {signature_name}")
                kind = _EXAMPLE_METHODS.get(task.method_name)
                if kind is None:
                    raise status.ServingStatusError(
                        grpc.StatusCode.UNIMPLEMENTED,
                        f"Unsupported signature method_name: {task.method_name}")
                aliases = kind.output_aliases(signature)
                tensor_name = signature.inputs[kind.input_alias].name
                if input_tensor is not None and tensor_name != input_tensor:
                    raise status.invalid_argument("Input tensor must be the same for all Signatures.")
                input_tensor = tensor_name
                plan.append((task, signature_name, kind, aliases))
            examples = self._serialized_examples(request.input)
            response = self._p.inference_pb2.MultiInferenceResponse()
            # Each task runs its own signature on the same examples; TF Serving
            # runs them in one session call, which gives the same outputs for
            # graphs without side effects.
            for task, signature_name, kind, aliases in plan:
                outputs = self._run(servable, signature_name, {kind.input_alias: examples}, aliases)
                result = response.results.add()
                self._fill_spec(result.model_spec, task.model_spec, signature_name, servable)
                kind.fill(getattr(result, kind.result_field), outputs, len(examples))
            return response

    # -- Metadata and status -----------------------------------------------

    def get_model_metadata(self, request):
        """Answers a GetModelMetadataRequest (only the signature_def field exists)."""
        _require_model_spec(request)
        if not request.metadata_field:
            raise status.invalid_argument(
                "GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise status.invalid_argument(f"Metadata field {field} is not supported")
        servable = self._manager.resolve(request.model_spec)
        response = self._p.get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        signature_map = self._p.get_model_metadata_pb2.SignatureDefMap()
        for key, signature in servable.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature)
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
        return response

    def get_model_status(self, request):
        """Answers a GetModelStatusRequest."""
        if not request.HasField("model_spec"):
            raise status.invalid_argument("Missing ModelSpec")
        response = self._p.get_model_status_pb2.GetModelStatusResponse()
        for state in self._manager.version_states(request.model_spec):
            entry = response.model_version_status.add()
            entry.version = state.version
            entry.state = state.state
            entry.status.error_code = state.error_code.value[0]
            entry.status.error_message = state.error_message
        return response
