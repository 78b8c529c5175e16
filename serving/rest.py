"""TensorFlow Serving's HTTP/REST API on a threaded HTTP server.

Routes (case-insensitive, as TensorFlow Serving matches them):
``GET /v1/models/<name>[/versions/<v>|/labels/<l>][/metadata]`` and
``POST /v1/models/<name>[/versions/<v>|/labels/<l>]:(predict|classify|regress)``.
JSON bodies are turned into the API's protobuf requests and handled by the
same :class:`serving.prediction.ApiHandler` as gRPC; errors come back as
``{"error": "<message>"}`` with the HTTP status TensorFlow Serving uses.
If a monitoring config enables Prometheus, its path serves the metrics.
"""

import http.server
import logging
import re
import socket
import threading
import urllib.parse

from google.protobuf import json_format

from serving import json_tensor, protos, status, tensors

_LOG = logging.getLogger(__name__)

_PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE)
_MAX_BODY_BYTES = 2 ** 31 - 1
_INT64_MAX = 2 ** 63 - 1


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
            return 200, "application/json", json_tensor.dumps(payload).encode("utf-8")
        except status.ServingStatusError as e:
            return (e.http_status, "application/json",
                    json_tensor.dumps({"error": e.message}).encode("utf-8"))
        except Exception:  # pylint: disable=broad-except
            # A bug must not drop the connection nor send a stack to the client:
            # the client gets INTERNAL, the log gets the traceback.
            _LOG.exception("REST %s %s failed", method, path)
            return 500, "application/json", json_tensor.dumps(
                {"error": status.INTERNAL_ERROR_TEXT}).encode("utf-8")

    @staticmethod
    def _check_version(version):
        if version is not None and int(version) > _INT64_MAX:
            raise status.invalid_argument(f"Failed to convert version: {version} to numeric.")

    def _model_spec(self, spec, name, version, label):
        spec.name = urllib.parse.unquote(name)
        if version is not None:
            self._check_version(version)
            spec.version.value = int(version)
        if label is not None:
            spec.version_label = urllib.parse.unquote(label)

    def _dispatch(self, method, path, body):
        if method == "POST":
            match = _PREDICTION_PATH.fullmatch(path)
            if match:
                name, version, label, verb = match.groups()
                verb = verb.lower()
                # The version is checked before the body, as TF Serving does.
                self._check_version(version)
                document = json_tensor.parse_document(body)
                if verb == "predict":
                    return self._predict(name, version, label, document)
                if verb == "classify":
                    return self._classify(name, version, label, document)
                return self._regress(name, version, label, document)
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

    def _signature_inputs(self, spec, signature_name):
        servable = self._manager.resolve(spec)
        key = signature_name or "serving_default"
        signature = servable.signature_defs.get(key)
        if signature is None:
            raise status.invalid_argument(f"Serving signature name: \"{key}\" not found in signature def")
        if not signature.inputs:
            raise status.invalid_argument(
                f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
        return signature.inputs

    def _predict(self, name, version, label, document):
        request = self._p.predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, name, version, label)
        request.model_spec.signature_name = document.get("signature_name", "")
        infos = self._signature_inputs(request.model_spec, request.model_spec.signature_name)
        has_instances, has_inputs = "instances" in document, "inputs" in document
        if has_instances and has_inputs:
            raise json_tensor.format_error(
                document, "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ")
        if not has_instances and not has_inputs:
            raise status.invalid_argument("Missing 'inputs' or 'instances' key")
        arrays = (json_tensor.instances_to_arrays(document, infos) if has_instances
                  else json_tensor.inputs_to_arrays(document, infos))
        tensor_proto = self._p.tensor_pb2.TensorProto
        for alias, array in arrays.items():
            request.inputs[alias].CopyFrom(tensors.to_tensor_proto(array, tensor_proto, infos[alias].dtype))
        response = self._handler.predict(request, api="rest")
        outputs = {alias: tensors.to_ndarray(t) for alias, t in response.outputs.items()}
        if has_instances:
            return {"predictions": json_tensor.row_predictions(outputs)}
        return {"outputs": json_tensor.columnar_outputs(outputs)}

    def _classify(self, name, version, label, document):
        request = self._p.classification_pb2.ClassificationRequest()
        self._model_spec(request.model_spec, name, version, label)
        request.model_spec.signature_name = document.get("signature_name", "")
        json_tensor.fill_example_input(document, request.input)
        response = self._handler.classify(request, api="rest")
        if not response.result.classifications:
            raise status.invalid_argument("Cannot convert empty ClassificationResults to JSON")
        return {"results": [[[c.label, json_tensor.Decimal(c.score, True)] for c in row.classes]
                            for row in response.result.classifications]}

    def _regress(self, name, version, label, document):
        request = self._p.regression_pb2.RegressionRequest()
        self._model_spec(request.model_spec, name, version, label)
        request.model_spec.signature_name = document.get("signature_name", "")
        json_tensor.fill_example_input(document, request.input)
        response = self._handler.regress(request, api="rest")
        if not response.result.regressions:
            raise status.invalid_argument("Cannot convert empty RegressionResults to JSON")
        return {"results": [json_tensor.Decimal(r.value, True) for r in response.result.regressions]}

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
