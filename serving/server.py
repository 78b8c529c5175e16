"""The model server: model manager, gRPC and REST endpoints, batching, metrics."""

import logging
import signal
import threading
from concurrent import futures

import grpc

from serving import server_config as config_lib
from serving import flags as flags_lib
from serving.batching import BatchScheduler
from serving.grpc_service import add_services
from serving.metrics import ServerMetrics
from serving.model_manager import ModelManager
from serving.prediction import ApiHandler
from serving.rest import RestApi, RestServer

_LOG = logging.getLogger(__name__)

# As tensorflow_model_server: accept messages up to 2 GB unless
# --grpc_channel_arguments lowers the limit.
_MAX_MESSAGE_BYTES = 2 ** 31 - 1


class StartupError(RuntimeError):
    """The server cannot start (bad configuration, no loadable model, busy port)."""


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
        try:
            if options.model_config_file:
                if options.model_base_path:
                    _LOG.warning("--model_base_path is ignored because --model_config_file is set")
                models = config_lib.read_model_server_config(options.model_config_file)
            else:
                models = [config_lib.single_model_config(options.model_name, options.model_base_path)]
            self.monitoring = config_lib.read_monitoring_config(options.monitoring_config_file)
            batching = (config_lib.read_batching_parameters(options.batching_parameters_file)
                        if options.enable_batching else None)
            channel_args = flags_lib.parse_channel_arguments(options.grpc_channel_arguments)
        except (config_lib.ServerConfigError, flags_lib.FlagError) as e:
            raise StartupError(str(e)) from e
        self.metrics = ServerMetrics()
        self.manager = ModelManager(
            models, poll_wait_seconds=options.file_system_poll_wait_seconds,
            max_num_load_retries=options.max_num_load_retries,
            load_retry_interval=options.load_retry_interval_micros / 1e6,
            allow_unavailable_labels=options.allow_version_labels_for_unavailable_models,
            on_change=self.metrics.set_loaded_versions)
        self.batcher = BatchScheduler(batching, self.metrics) if batching else None
        self.handler = ApiHandler(self.manager, self.batcher, self.metrics)
        self._channel_args = channel_args
        self._grpc = None
        self._rest = None

    def start(self):
        """Loads the initial model versions, then opens the gRPC and REST ports.

        Like tensorflow_model_server, the ports open only once every model has
        an available version, so clients see UNAVAILABLE while models load.

        Raises:
            StartupError: a model has versions but none loads, or a port is busy.
        """
        failed = self.manager.load_initial()
        if self.manager.stopping:
            return
        if failed:
            raise StartupError(f"Some models did not become available: {{{', '.join(failed)}}}")
        for problem in self.manager.check_labels():
            _LOG.error("Version label problem: %s", problem)
        self.manager.start_polling()
        options = [("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES)]
        overridden = {key for key, _ in self._channel_args}
        options = [o for o in options if o[0] not in overridden] + self._channel_args
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.options.grpc_max_threads,
                                       thread_name_prefix="grpc"), options=options)
        add_services(self._grpc, self.handler)
        address = f"0.0.0.0:{self.options.port}"
        try:
            bound = self._grpc.add_insecure_port(address)
        except RuntimeError as e:
            raise StartupError(f"cannot listen for gRPC on {address}: {e}") from e
        if not bound:
            raise StartupError(f"cannot listen for gRPC on {address}")
        self._grpc.start()
        _LOG.info("Running gRPC ModelServer at %s ...", address)
        if self.options.rest_api_port:
            metrics_path = self.monitoring.prometheus_path if self.monitoring.prometheus_enabled else None
            api = RestApi(self.handler, self.manager, self.metrics, metrics_path)
            try:
                self._rest = RestServer(self.options.rest_api_port, api)
            except OSError as e:
                raise StartupError(f"cannot listen for HTTP/REST on port {self.options.rest_api_port}: {e}") from e
            self._rest.start()
            _LOG.info("Exporting HTTP/REST API at:localhost:%d ...", self.options.rest_api_port)
            if metrics_path:
                _LOG.info("Prometheus metrics at http://localhost:%d%s", self.options.rest_api_port,
                          metrics_path)
        elif self.monitoring.prometheus_enabled:
            _LOG.warning("Prometheus metrics need --rest_api_port; they are not exported")

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
        if done is not None:
            done.wait()
        if self.batcher is not None:
            self.batcher.stop()
        _LOG.info("Server stopped")
        self._stopped.set()

    def install_signal_handlers(self):
        """Makes SIGTERM and SIGINT stop the server gracefully."""
        def handle(signum, _frame):
            _LOG.info("Received signal %d", signum)
            threading.Thread(target=self.stop, name="shutdown").start()
        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
