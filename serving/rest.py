"""TensorFlow Serving's HTTP/REST API on a threaded HTTP server.

Routes (case-insensitive, as TensorFlow Serving matches them):
``GET /v1/models/<name>[/versions/<v>|/labels/<l>][/metadata]`` and
``POST /v1/models/<name>[/versions/<v>|/labels/<l>]:(predict|classify|regress)``.
JSON bodies are turned into the API's protobuf requests and handled by the
same :class:`serving.prediction.ApiHandler` as gRPC; errors come back as
``{"error": "<message>"}`` with the HTTP status TensorFlow Serving uses.
If a monitoring config enables Prometheus, its path serves the metrics.
"""

import base64
import http.server
import json
import logging
import re
import socket
import threading
import urllib.parse

import grpc
import numpy as np
from google.protobuf import json_format

from serving import protos, status, tensors

_LOG = logging.getLogger(__name__)

_PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE)
_BYTES_SUFFIX = "_bytes"
_MAX_BODY_BYTES = 2 ** 31 - 1


def _is_b64(value) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _decode_b64(value, name):
    if not isinstance(value["b64"], str):
        raise status.invalid_argument(f"'b64' value of input '{name}' must be a string")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except ValueError as e:
        raise status.invalid_argument(f"Unable to base64 decode input '{name}': {e}") from e


def _strings(value, name):
    if isinstance(value, list):
        return [_strings(v, name) for v in value]
    if _is_b64(value):
        return _decode_b64(value, name)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise status.invalid_argument(
        f"Input '{name}' expects strings (or {{\"b64\": ...}} objects), got {json.dumps(value)[:80]}")


def _json_to_array(value, info, name) -> np.ndarray:
    """Converts a JSON value to an array of a signature input's dtype."""
    if info.dtype == tensors.DT_STRING:
        nested = _strings(value, name)
        array = np.array(nested, dtype=object)
        if array.dtype != object or any(not isinstance(v, bytes) for v in array.reshape(-1)):
            raise status.invalid_argument(f"Input '{name}' is not a rectangular list of strings")
        return array
    try:
        np_dtype = tensors.numpy_dtype(info.dtype)
    except tensors.TensorConversionError as e:
        raise status.invalid_argument(f"Input '{name}': {e}") from e

    def check(v):
        if isinstance(v, list):
            for item in v:
                check(item)
        elif isinstance(v, bool) and np_dtype != np.bool_:
            raise status.invalid_argument(f"Input '{name}' expects numbers, got a boolean")
        elif not isinstance(v, (int, float, bool)):
            raise status.invalid_argument(
                f"Input '{name}' of type {tensors.dtype_name(info.dtype)} got a non-numeric value "
                f"{json.dumps(v)[:80]}")

    check(value)
    try:
        return np.array(value, dtype=np_dtype)
    except (ValueError, OverflowError) as e:
        raise status.invalid_argument(f"Input '{name}' is not a rectangular list of numbers: {e}") from e


def _known_input(key, infos):
    if key not in infos:
        raise status.invalid_argument(
            f"JSON object: does not have named input: {key}. Inputs expected to be in the set "
            f"{{{','.join(sorted(infos))}}}.")
    return key


def _array_to_json(array: np.ndarray, alias: str):
    if array.dtype == object:
        if alias.endswith(_BYTES_SUFFIX):
            encode = lambda b: {"b64": base64.b64encode(b).decode("ascii")}  # noqa: E731
        else:
            encode = lambda b: b.decode("utf-8", "replace")  # noqa: E731
        flat = [encode(bytes(v)) for v in array.reshape(-1)]
        return np.array(flat, dtype=object).reshape(array.shape).tolist() if array.ndim else flat[0]
    return array.tolist()


class RestApi:
    """Turns REST requests into API calls.

    Args:
        handler: the :class:`serving.prediction.ApiHandler`.
        manager: the :class:`serving.model_manager.ModelManager` (for signature lookups).
        metrics: :class:`serving.metrics.ServerMetrics` or None.
        metrics_path: URL path of the Prometheus endpoint, or None.
    """

    def __init__(self, handler, manager, metrics=None, metrics_path=None):
        self._handler = handler
        self._manager = manager
        self._metrics = metrics
        self._metrics_path = metrics_path
        self._p = protos.load()

    def handle(self, method: str, path: str, body: bytes):
        """Handles one request.

        Returns:
            (HTTP status, content type, response bytes).
        """
        if self._metrics_path and method == "GET" and path == self._metrics_path and self._metrics:
            from serving.metrics import CONTENT_TYPE  # pylint: disable=import-outside-toplevel
            return 200, CONTENT_TYPE, self._metrics.exposition()
        try:
            payload = self._dispatch(method, path, body)
            return 200, "application/json", json.dumps(payload, indent=1).encode("utf-8")
        except status.ServingStatusError as e:
            return (e.http_status, "application/json",
                    json.dumps({"error": e.message}, indent=1).encode("utf-8"))

    def _model_spec(self, spec, name, version, label):
        spec.name = urllib.parse.unquote(name)
        if version is not None:
            spec.version.value = int(version)
        if label is not None:
            spec.version_label = urllib.parse.unquote(label)

    def _dispatch(self, method, path, body):
        if method == "POST":
            match = _PREDICTION_PATH.fullmatch(path)
            if match:
                name, version, label, verb = match.groups()
                verb = verb.lower()
                request_json = self._parse_body(body)
                if verb == "predict":
                    return self._predict(name, version, label, request_json)
                if verb == "classify":
                    return self._classify(name, version, label, request_json)
                raise status.ServingStatusError(grpc.StatusCode.UNIMPLEMENTED,
                                                "Regress is not implemented by this server")
        elif method == "GET":
            match = _STATUS_PATH.fullmatch(path)
            if match:
                name, version, label, subresource = match.groups()
                if not name:
                    raise status.invalid_argument("Missing model name in request.")
                if subresource:
                    return self._metadata(name, version, label)
                return self._status(name, version, label)
        raise status.invalid_argument(f"Malformed request: {method} {path}")

    @staticmethod
    def _parse_body(body):
        try:
            parsed = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise status.invalid_argument(f"JSON Parse error: body is not UTF-8: {e}") from e
        except json.JSONDecodeError as e:
            raise status.invalid_argument(f"JSON Parse error: {e.msg} at offset: {e.pos}") from e
        if not isinstance(parsed, dict):
            raise status.invalid_argument("JSON Value not an object")
        signature_name = parsed.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise status.invalid_argument("'signature_name' key must be a string value.")
        return parsed

    def _signature_inputs(self, spec, signature_name):
        servable = self._manager.resolve(spec)
        key = signature_name or "serving_default"
        signature = servable.signature_defs.get(key)
        if signature is None:
            raise status.invalid_argument(f"Serving signature name: \"{key}\" not found in signature def")
        return signature.inputs

    def _predict(self, name, version, label, request_json):
        request = self._p.predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, name, version, label)
        request.model_spec.signature_name = request_json.get("signature_name", "")
        has_instances, has_inputs = "instances" in request_json, "inputs" in request_json
        if has_instances == has_inputs:
            raise status.invalid_argument(
                "Missing 'inputs' or 'instances' key" if not has_inputs else
                "Not formatted correctly expecting only one of 'inputs' or 'instances' keys exists")
        infos = self._signature_inputs(request.model_spec, request.model_spec.signature_name)
        arrays = (self._from_instances(request_json["instances"], infos) if has_instances
                  else self._from_columns(request_json["inputs"], infos))
        tensor_proto = self._p.tensor_pb2.TensorProto
        for alias, array in arrays.items():
            request.inputs[alias].CopyFrom(
                tensors.to_tensor_proto(array, tensor_proto, infos[alias].dtype))
        response = self._handler.predict(request, api="rest")
        outputs = {alias: tensors.to_ndarray(t) for alias, t in response.outputs.items()}
        if has_instances:
            return {"predictions": self._rows(outputs)}
        if len(outputs) == 1:
            alias, array = next(iter(outputs.items()))
            return {"outputs": _array_to_json(array, alias)}
        return {"outputs": {alias: _array_to_json(a, alias) for alias, a in outputs.items()}}

    @staticmethod
    def _single_input(infos):
        if len(infos) != 1:
            raise status.invalid_argument(
                f"The signature has {len(infos)} inputs ({','.join(sorted(infos))}): name them "
                "in each instance (row format) or in an 'inputs' object (columnar format)")
        return next(iter(infos))

    def _from_instances(self, instances, infos):
        if not isinstance(instances, list) or not instances:
            raise status.invalid_argument("'instances' must be a non-empty JSON list")
        named = [isinstance(row, dict) and not _is_b64(row) for row in instances]
        if all(named):
            keys = set(instances[0])
            for row in instances:
                if set(row) != keys:
                    raise status.invalid_argument(
                        "Failed to process element: every instance must have the same named inputs "
                        f"({','.join(sorted(keys))})")
            for key in keys:
                _known_input(key, infos)
            return {key: _json_to_array([row[key] for row in instances], infos[key], key) for key in keys}
        if any(named):
            raise status.invalid_argument("Instances mix named-input objects and plain values")
        alias = self._single_input(infos)
        return {alias: _json_to_array(instances, infos[alias], alias)}

    def _from_columns(self, inputs, infos):
        if isinstance(inputs, dict) and not _is_b64(inputs):
            return {key: _json_to_array(value, infos[_known_input(key, infos)], key)
                    for key, value in inputs.items()}
        alias = self._single_input(infos)
        return {alias: _json_to_array(inputs, infos[alias], alias)}

    @staticmethod
    def _rows(outputs):
        count = {a.shape[0] if a.ndim else None for a in outputs.values()}
        if len(count) != 1 or None in count:
            raise status.invalid_argument(
                "Output tensors do not share a 0th dimension; request the columnar format "
                "('inputs') instead of 'instances'")
        rows = count.pop()
        converted = {alias: _array_to_json(a, alias) for alias, a in outputs.items()}
        if len(converted) == 1:
            return next(iter(converted.values()))
        return [{alias: values[i] for alias, values in converted.items()} for i in range(rows)]

    def _classify(self, name, version, label, request_json):
        request = self._p.classification_pb2.ClassificationRequest()
        self._model_spec(request.model_spec, name, version, label)
        request.model_spec.signature_name = request_json.get("signature_name", "")
        examples = request_json.get("examples")
        if not isinstance(examples, list) or not examples:
            raise status.invalid_argument("'examples' must be a non-empty JSON list")
        if "context" in request_json:
            target = request.input.example_list_with_context
            self._fill_example(target.context, request_json["context"])
        else:
            target = request.input.example_list
        for example_json in examples:
            self._fill_example(target.examples.add(), example_json)
        response = self._handler.classify(request, api="rest")
        results = []
        for classifications in response.result.classifications:
            results.append([[c.label, c.score] if c.label else c.score for c in classifications.classes])
        return {"results": results}

    @staticmethod
    def _fill_example(example, example_json):
        if not isinstance(example_json, dict):
            raise status.invalid_argument("Each example must be a JSON object of features")
        for key, value in example_json.items():
            values = value if isinstance(value, list) else [value]
            feature = example.features.feature[key]
            if all(isinstance(v, bool) or isinstance(v, int) for v in values):
                feature.int64_list.value.extend(int(v) for v in values)
            elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                feature.float_list.value.extend(float(v) for v in values)
            elif all(isinstance(v, str) or _is_b64(v) for v in values):
                feature.bytes_list.value.extend(
                    _decode_b64(v, key) if _is_b64(v) else v.encode("utf-8") for v in values)
            else:
                raise status.invalid_argument(f"Feature '{key}' mixes value types or is not a "
                                              "number, string or {\"b64\": ...}")

    def _status(self, name, version, label):
        request = self._p.get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec, name, version, label)
        response = self._handler.get_model_status(request)
        return json_format.MessageToDict(response, preserving_proto_field_name=True,
                                         including_default_value_fields=True)

    def _metadata(self, name, version, label):
        request = self._p.get_model_metadata_pb2.GetModelMetadataRequest()
        self._model_spec(request.model_spec, name, version, label)
        request.metadata_field.append("signature_def")
        response = self._handler.get_model_metadata(request)
        signature_map = self._p.get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        to_dict = lambda m: json_format.MessageToDict(  # noqa: E731
            m, preserving_proto_field_name=True, including_default_value_fields=True)
        return {"model_spec": to_dict(response.model_spec),
                "metadata": {"signature_def": to_dict(signature_map)}}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "koa-serving"
    # Headers and body go out in two writes; with Nagle's algorithm the body
    # then waits for the client's delayed ACK (about 40 ms per request).
    disable_nagle_algorithm = True

    def handle(self):
        self.idle = True
        self.server.track(self, True)
        try:
            super().handle()
        finally:
            self.server.track(self, False)

    def _serve(self, method):
        self.idle = False
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0 or length > _MAX_BODY_BYTES:
                code, ctype, data = 413, "application/json", b'{"error": "request body too large"}'
            else:
                body = self.rfile.read(length) if length else b""
                path = urllib.parse.urlsplit(self.path).path
                code, ctype, data = self.server.api.handle(method, path, body)
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            if self.server.stopping:
                self.close_connection = True
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        finally:
            self.idle = True

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self._serve("GET")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def log_message(self, format, *args):  # noqa: A002 (signature of the base class)
        _LOG.debug("%s - %s", self.address_string(), format % args)


class RestServer(http.server.ThreadingHTTPServer):
    """HTTP server for :class:`RestApi`, one thread per connection.

    ``stop()`` stops accepting, closes idle keep-alive connections, lets
    requests in progress finish and waits for their threads.
    """

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, port: int, api: RestApi, host: str = "0.0.0.0"):
        super().__init__((host, port), _Handler)
        self.api = api
        self.stopping = False
        self._connections = set()
        self._lock = threading.Lock()
        self._thread = None

    def track(self, handler, alive: bool):
        """Registers or forgets a connection handler."""
        with self._lock:
            (self._connections.add if alive else self._connections.discard)(handler)

    def start(self):
        """Serves in a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="rest-server", daemon=True)
        self._thread.start()

    def stop(self):
        """Drains in-flight requests and closes the server."""
        self.stopping = True
        self.shutdown()
        with self._lock:
            idle = [h for h in self._connections if getattr(h, "idle", True)]
        for handler in idle:
            try:
                handler.connection.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        self.server_close()
