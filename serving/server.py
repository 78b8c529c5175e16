"""The model server: model manager, gRPC and REST endpoints, batching, metrics,
model warmup and model config reloads (file polling and HandleReloadConfigRequest)."""

import functools
import logging
import signal
import threading
from concurrent import futures

import grpc

from serving import server_config as config_lib
from serving import flags as flags_lib
from serving import status, warmup
from serving.batching import BatchScheduler
from serving.grpc_service import add_services
from serving.metrics import ServerMetrics
from serving.model_manager import ModelManager
from serving.prediction import ApiHandler
from serving.rest import RestApi, RestServer
from serving.servable import Servable

_LOG = logging.getLogger(__name__)

# As tensorflow_model_server: accept messages up to 2 GB unless
# --grpc_channel_arguments lowers the limit.
_MAX_MESSAGE_BYTES = 2 ** 31 - 1


class StartupError(RuntimeError):
    """The server cannot start (bad configuration, no loadable model, busy port)."""


class _TimedHandler:
    """The API handler as the REST server sees it: ``--rest_api_num_threads``
    workers run the calls, each answered within ``--rest_api_timeout_in_ms``.

    A call that overruns is answered DEADLINE_EXCEEDED (HTTP 504); TensorFlow
    cannot interrupt a running signature, so its worker finishes it unseen.
    """

    def __init__(self, handler, num_threads: int, timeout_ms: int):
        self._handler = handler
        self._pool = futures.ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="rest-worker")
        self._timeout = timeout_ms / 1000.0 if timeout_ms > 0 else None
        self._timeout_ms = timeout_ms

    def __getattr__(self, name):
        method = getattr(self._handler, name)
        if name.startswith("_") or not callable(method):
            return method

        @functools.wraps(method)
        def timed(*args, **kwargs):
            future = self._pool.submit(method, *args, **kwargs)
            try:
                return future.result(timeout=self._timeout)
            except futures.TimeoutError:
                raise status.ServingStatusError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"Request did not complete within {self._timeout_ms} ms "
                    "(--rest_api_timeout_in_ms)") from None

        return timed

    def shutdown(self):
        """Waits for the calls in progress and stops the workers."""
        self._pool.shutdown(wait=True)


def _session_config(options: flags_lib.ServerOptions):
    """The ConfigProto for every model's Session (None: TensorFlow's defaults).

    Raises:
        config_lib.ServerConfigError: --tensorflow_session_config_file is unreadable or invalid.
    """
    intra = options.tensorflow_intra_op_parallelism or options.tensorflow_session_parallelism
    inter = options.tensorflow_inter_op_parallelism or options.tensorflow_session_parallelism
    return config_lib.read_session_config(options.tensorflow_session_config_file, intra, inter)


class ModelServer:
    """A running server built from :class:`serving.flags.ServerOptions`.

    Args:
        options: the parsed flags.
        shutdown_grace_seconds: how long ``stop()`` lets in-flight requests finish.
    """

    def __init__(self, options: flags_lib.ServerOptions, shutdown_grace_seconds: float = 30.0):
        self.options = options
        self._grace = shutdown_grace_seconds
        self._stopped = threading.Event()
        self._config_text = None  # the config file's text now in effect (set by _read_models)
        try:
            models = self._read_models()
            self.monitoring = config_lib.read_monitoring_config(options.monitoring_config_file)
            batching = (config_lib.read_batching_parameters(options.batching_parameters_file)
                        if options.enable_batching else None)
            channel_args = flags_lib.parse_channel_arguments(options.grpc_channel_arguments)
            session_config = _session_config(options)
        except (config_lib.ServerConfigError, flags_lib.FlagError) as e:
            raise StartupError(str(e)) from e
        self.metrics = ServerMetrics()
        run_warmup = (functools.partial(warmup.run_warmup,
                                        num_request_iterations=options.num_request_iterations_for_warmup)
                      if options.enable_model_warmup else None)
        self.manager = ModelManager(
            models, poll_wait_seconds=options.file_system_poll_wait_seconds,
            max_num_load_retries=options.max_num_load_retries,
            load_retry_interval=options.load_retry_interval_micros / 1e6,
            allow_unavailable_labels=options.allow_version_labels_for_unavailable_models,
            on_change=self.metrics.set_loaded_versions, warmup=run_warmup,
            servable_factory=functools.partial(Servable, session_config=session_config))
        self.batcher = BatchScheduler(batching, self.metrics) if batching else None
        self.handler = ApiHandler(self.manager, self.batcher, self.metrics)
        self._channel_args = channel_args
        self._grpc = None
        self._rest = None
        self._rest_handler = None
        self._config_poller = None

    def _read_models(self) -> list:
        """The model configs from --model_config_file or --model_name/--model_base_path.

        Raises:
            config_lib.ServerConfigError: the config is invalid.
        """
        options = self.options
        if options.model_config_file:
            if options.model_base_path:
                _LOG.warning("--model_base_path is ignored because --model_config_file is set")
            self._config_text = config_lib.read_text(options.model_config_file)
            return config_lib.read_model_server_config(options.model_config_file)
        return config_lib.single_model_config(options.model_name, options.model_base_path)

    def handle_reload_config_request(self, request):
        """ModelService.HandleReloadConfigRequest: applies ``request.config``.

        Like TensorFlow Serving, only a ``model_config_list`` is accepted; the
        new config is validated as a config file is, then replaces the served
        model set (see :meth:`ModelManager.reload`).

        Returns:
            A ``ReloadConfigResponse`` with an OK status.

        Raises:
            status.ServingStatusError: INVALID_ARGUMENT for a rejected config
                (nothing changed), UNKNOWN when new models did not become
                available, FAILED_PRECONDITION when a label names an
                unavailable version (the config is in effect in both cases).
        """
        config = request.config
        if config.WhichOneof("config") != "model_config_list":
            raise status.invalid_argument(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                "Only ModelConfigList is currently supported")
        for index, model in enumerate(config.model_config_list.config):
            _LOG.info("Config entry index: %d path: %s name: %s platform: %s", index, model.base_path,
                      model.name, model.model_platform)
        try:
            models = config_lib.models_from_proto(config)
        except config_lib.ServerConfigError as e:
            _LOG.error("ReloadConfig failed: %s", e)
            raise status.invalid_argument(str(e)) from e
        problems = self.manager.reload(models)
        if problems:
            _LOG.error("ReloadConfig failed: %s", "; ".join(problems))
            code = (grpc.StatusCode.UNKNOWN if "did not become available" in problems[0]
                    else grpc.StatusCode.FAILED_PRECONDITION)
            raise status.ServingStatusError(code, "; ".join(problems))
        # Imported by serving.protos.load() with the ModelService stubs.
        from tensorflow_serving.apis import model_management_pb2  # pylint: disable=import-outside-toplevel
        return model_management_pb2.ReloadConfigResponse()

    def _poll_config_file(self):
        """Re-reads --model_config_file every --model_config_file_poll_wait_seconds."""
        path = self.options.model_config_file
        while not self._stopped.wait(self.options.model_config_file_poll_wait_seconds):
            try:
                text = config_lib.read_text(path)
                if text == self._config_text:
                    continue
                models = config_lib.read_model_server_config(path)
            except config_lib.ServerConfigError as e:
                _LOG.error("Failed to read model config file %s; keeping the current config: %s", path, e)
                continue
            self._config_text = text
            _LOG.info("Model config file %s changed; reloading", path)
            for problem in self.manager.reload(models):
                _LOG.error("ReloadConfig: %s", problem)

    def start(self):
        """Loads the initial model versions, then opens the gRPC and REST ports.

        Like tensorflow_model_server, the ports open only once every model has
        an available version or has had all its versions fail, so clients see
        UNAVAILABLE while models load. A model that cannot load is reported
        (GetModelStatus, log) and does not hold back the others.

        Raises:
            StartupError: models are configured but none loads, or a port is busy.
        """
        failed = self.manager.load_initial()
        if self.manager.stopping:
            return
        if failed and len(failed) == len(self.manager.models):
            raise StartupError(f"Some models did not become available: {{{', '.join(failed)}}}")
        for name in failed:
            _LOG.error("Model %s did not become available; serving the other models (its versions "
                       "are retried when their files change)", name)
        for problem in self.manager.label_problems():
            _LOG.error("Version label problem: %s", problem)
        self.manager.start_polling()
        self._start_grpc()
        self._start_rest()
        if self.options.model_config_file and self.options.model_config_file_poll_wait_seconds > 0:
            self._config_poller = threading.Thread(target=self._poll_config_file, name="config-poller",
                                                   daemon=True)
            self._config_poller.start()

    def _start_grpc(self):
        options = [("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES)]
        overridden = {key for key, _ in self._channel_args}
        options = [o for o in options if o[0] not in overridden] + self._channel_args
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.options.grpc_max_threads,
                                       thread_name_prefix="grpc"), options=options)
        add_services(self._grpc, self.handler, reload_config=self.handle_reload_config_request)
        addresses = []
        if self.options.port:
            addresses.append(f"{self.options.bind_address}:{self.options.port}")
        if self.options.grpc_socket_path:
            addresses.append(f"unix:{self.options.grpc_socket_path}")
        for address in addresses:
            try:
                bound = self._grpc.add_insecure_port(address)
            except RuntimeError as e:
                raise StartupError(f"cannot listen for gRPC on {address}: {e}") from e
            if not bound and not address.startswith("unix:"):
                raise StartupError(f"cannot listen for gRPC on {address}")
        self._grpc.start()
        for address in addresses:
            _LOG.info("Running gRPC ModelServer at %s ...", address)

    def _start_rest(self):
        port = self.options.rest_api_port
        if not port:
            if self.monitoring.prometheus_enabled:
                _LOG.warning("Prometheus metrics need --rest_api_port; they are not exported")
            return
        if port == self.options.port:
            _LOG.error("--rest_api_port cannot be same as --port. Please use a different port for "
                       "HTTP/REST API. Skipped exporting HTTP/REST API.")
            return
        metrics_path = self.monitoring.prometheus_path if self.monitoring.prometheus_enabled else None
        self._rest_handler = _TimedHandler(self.handler, self.options.rest_api_num_threads,
                                           self.options.rest_api_timeout_in_ms)
        api = RestApi(self._rest_handler, self.manager, self.metrics, metrics_path)
        try:
            self._rest = RestServer(port, api, host=self.options.bind_address)
        except OSError as e:
            raise StartupError(f"cannot listen for HTTP/REST on port {port}: {e}") from e
        self._rest.start()
        _LOG.info("Exporting HTTP/REST API at:%s:%d ...", self.options.bind_address, port)
        if metrics_path:
            _LOG.info("Prometheus metrics at http://localhost:%d%s", port, metrics_path)

    def wait(self):
        """Blocks until :meth:`stop` has completed."""
        self._stopped.wait()

    def stop(self):
        """Stops accepting requests, drains in-flight ones, then releases models."""
        if self._stopped.is_set():
            return
        _LOG.info("Shutting down: draining in-flight requests (up to %.0fs)", self._grace)
        self.manager.stop()
        done = self._grpc.stop(self._grace) if self._grpc is not None else None
        if self.batcher is not None:
            self.batcher.flush()
        if self._rest is not None:
            self._rest.stop()
        if self._rest_handler is not None:
            self._rest_handler.shutdown()
        if done is not None:
            done.wait()
        if self.batcher is not None:
            self.batcher.stop()
        self._stopped.set()
        if self._config_poller is not None:
            self._config_poller.join()
        _LOG.info("Server stopped")

    def install_signal_handlers(self):
        """Makes SIGTERM and SIGINT stop the server gracefully."""
        def handle(signum, _frame):
            _LOG.info("Received signal %d", signum)
            threading.Thread(target=self.stop, name="shutdown").start()
        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
