"""Prometheus metrics of the model server.

Request count and latency by model, version, signature, API, method and
status code; batch sizes; loaded versions per model. Exported on the REST
port at the path of ``--monitoring_config_file`` (TensorFlow Serving's
convention). Names are the project's own (``koa_serving_*``), not TensorFlow
Serving's ``:tensorflow:serving:*``.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_REQUEST_LABELS = ("model", "version", "signature", "api", "method", "status")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """The server's metrics in a registry of their own."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self._requests = Counter("koa_serving_requests", "API requests handled",
                                 _REQUEST_LABELS, registry=self.registry)
        self._latency = Histogram("koa_serving_request_latency_seconds",
                                  "Time from request decoded to response built",
                                  _REQUEST_LABELS, buckets=_LATENCY_BUCKETS, registry=self.registry)
        self._batch_size = Histogram("koa_serving_batch_size", "Rows per batched signature run",
                                     ("model", "version", "signature"), buckets=_BATCH_BUCKETS,
                                     registry=self.registry)
        self._loaded = Gauge("koa_serving_loaded_versions", "Versions available for inference",
                             ("model",), registry=self.registry)
        self._version_up = Gauge("koa_serving_version_available",
                                 "1 while the model version is available", ("model", "version"),
                                 registry=self.registry)
        self._in_flight = Gauge("koa_serving_requests_in_flight", "API requests being handled",
                                registry=self.registry)
        self._known_versions = {}
        # labels -> (request counter, latency histogram) children: prometheus_client's
        # labels() validates and locks on every call, a per-request cost worth saving.
        self._request_children = {}

    def request_started(self):
        """Counts a request as in flight until :meth:`observe_request`."""
        self._in_flight.inc()

    def observe_request(self, model, version, signature, api, method, status_name, seconds):
        """Counts one request and records its latency."""
        labels = (model, str(version), signature, api, method, status_name)
        self._in_flight.dec()
        children = self._request_children.get(labels)
        if children is None:
            children = self._request_children.setdefault(
                labels, (self._requests.labels(*labels), self._latency.labels(*labels)))
        children[0].inc()
        children[1].observe(seconds)

    def observe_batch(self, model, version, signature, rows):
        """Records the size of one batched run."""
        self._batch_size.labels(model, str(version), signature).observe(rows)

    def set_loaded_versions(self, model, versions):
        """Records which versions of a model are available."""
        self._loaded.labels(model).set(len(versions))
        previous = self._known_versions.get(model, set())
        for version in previous - set(versions):
            self._version_up.labels(model, str(version)).set(0)
        for version in versions:
            self._version_up.labels(model, str(version)).set(1)
        self._known_versions[model] = set(versions)

    def exposition(self) -> bytes:
        """Returns the metrics in Prometheus text format."""
        return generate_latest(self.registry)
