"""One loaded SavedModel version and the running of its signatures.

The SignatureDefs are read from ``saved_model.pb`` itself, exactly as
TensorFlow Serving reports them in GetModelMetadata. Every SavedModel, TF1
(session-based, with assets and a legacy init op) or TF2, is loaded the way
TensorFlow Serving loads it: its ``serve`` MetaGraph is imported into a graph
of its own, variables are restored and the init op is run in a
``tf.compat.v1.Session``. Requests feed the signature's input tensors and
fetch its output tensors by name, so TensorFlow alone decides whether a
tensor's shape and dtype fit the graph (no static pre-check of the
SignatureDef's shapes, which are hints: ``x`` of shape ``[-1, 1]`` accepts a
``[3]`` tensor if the graph's ops do).
"""

import logging
import os
import re
import threading
import weakref

import grpc
import numpy as np

from serving import protos, status

_LOG = logging.getLogger(__name__)

SERVE_TAG = "serve"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

# Python-side decoration TensorFlow may add to a runtime error: the Python
# stack that built the op. It names the server's own files and is not part of
# TensorFlow Serving's answers, which carry the C++ status text only.
_ORIGINAL_TRACE = re.compile(r"\n\s*Original stack trace for .*", re.DOTALL)
_TRACE_LINE = re.compile(r'^\s*File ".*", line \d+.*$\n?(^\s{4,}\S.*$\n?)?', re.MULTILINE)


class ServableLoadError(RuntimeError):
    """A version directory does not hold a loadable SavedModel.

    Attributes:
        code: canonical status code to report in GetModelStatus.
    """

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.UNKNOWN):
        super().__init__(message)
        self.code = code


def _tf():
    # TensorFlow is imported on first load, never at import time, so that the
    # server's flag parsing and the protobuf-only modules stay light.
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf


def client_message(error) -> str:
    """Returns a TensorFlow error's text as sent to a client: the status message
    without any Python stack TensorFlow appended (file paths stay in the server log)."""
    message = getattr(error, "message", None) or str(error)
    message = _ORIGINAL_TRACE.sub("", message)
    return _TRACE_LINE.sub("", message).rstrip()


def read_signature_defs(path: str) -> dict:
    """Returns the SignatureDefs of the ``serve`` MetaGraph of a SavedModel.

    Raises:
        ServableLoadError: no ``saved_model.pb``, unparsable, or no ``serve`` MetaGraph.
    """
    pb_path = os.path.join(path, "saved_model.pb")
    p = protos.load()
    try:
        with open(pb_path, "rb") as f:
            saved_model = p.saved_model_pb2.SavedModel.FromString(f.read())
    except FileNotFoundError as e:
        raise ServableLoadError(f"SavedModel not found in export directory: {path}",
                                grpc.StatusCode.NOT_FOUND) from e
    except Exception as e:  # protobuf raises DecodeError and others on bad bytes
        raise ServableLoadError(f"cannot parse {pb_path}: {e}", grpc.StatusCode.DATA_LOSS) from e
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ServableLoadError(f"{path} has no MetaGraph tagged '{SERVE_TAG}'", grpc.StatusCode.NOT_FOUND)


class Servable:
    """A loaded model version.

    Attributes:
        name: model name.
        version: version number.
        path: the version directory.
        signature_defs: SignatureDef protos by signature key.
    """

    def __init__(self, name: str, version: int, path: str):
        """Loads the SavedModel in ``path`` into a session of its own.

        Raises:
            ServableLoadError: the directory does not hold a loadable SavedModel.
        """
        self.name = name
        self.version = version
        self.path = path
        self.signature_defs = read_signature_defs(path)
        tf = _tf()
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph)
        try:
            with self._graph.as_default():
                tf.compat.v1.saved_model.loader.load(self._session, [SERVE_TAG], path)
        except tf.errors.OpError as e:
            self._session.close()
            raise ServableLoadError(client_message(e), status.code_from_number(e.error_code)) from e
        except (ValueError, OSError, KeyError, TypeError, RuntimeError) as e:
            self._session.close()
            raise ServableLoadError(f"cannot load SavedModel {path}: {e}") from e
        self._callables = {}
        self._lock = threading.Lock()
        # The session is released by close(), or when the last reference goes:
        # an unloaded version lives on only while requests that resolved it still
        # hold it (TensorFlow Serving's servable handles), then frees its memory.
        self._release = weakref.finalize(self, _close_session, self._session, f"{name} version {version}")
        self._release.atexit = False  # the process's end releases everything anyway

    def _callable(self, signature_name: str, input_aliases: tuple, output_aliases: tuple):
        """A session callable feeding and fetching a signature's tensors, made once per
        (signature, inputs, outputs) combination."""
        key = (signature_name, input_aliases, output_aliases)
        with self._lock:
            function = self._callables.get(key)
            if function is None:
                from tensorflow.core.protobuf import config_pb2  # pylint: disable=import-outside-toplevel

                signature = self.signature_defs[signature_name]
                options = config_pb2.CallableOptions(
                    feed=[signature.inputs[a].name for a in input_aliases],
                    fetch=[signature.outputs[a].name for a in output_aliases])
                # A callable from options runs the C++ session directly: unlike
                # Session.run it does not refuse a feed whose shape differs from
                # the placeholder's static shape (TensorFlow Serving does not either).
                function = self._session._make_callable_from_options(options)  # pylint: disable=protected-access
                self._callables[key] = function
        return function

    def run(self, signature_name: str, inputs: dict, output_aliases) -> dict:
        """Runs a signature.

        Args:
            signature_name: a key of :attr:`signature_defs`.
            inputs: numpy arrays by input alias (object arrays of bytes for
                strings); any subset of the signature's inputs.
            output_aliases: which outputs to return.

        Returns:
            numpy arrays by output alias (object arrays of bytes for strings).

        Raises:
            status.ServingStatusError: unknown signature, or TensorFlow rejected
                the inputs or failed (code and text taken from TensorFlow's error).
        """
        tf = _tf()
        if not self._release.alive:
            raise status.ServingStatusError(
                grpc.StatusCode.UNAVAILABLE,
                f"Servable {self.name} version {self.version} has been unloaded")
        if signature_name not in self.signature_defs:
            raise status.ServingStatusError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Serving signature key \"{signature_name}\" not found.")
        input_aliases = tuple(sorted(inputs))
        output_aliases = tuple(output_aliases)
        try:
            function = self._callable(signature_name, input_aliases, output_aliases)
            values = function(*[inputs[a] for a in input_aliases])
        except tf.errors.OpError as e:
            raise status.ServingStatusError(status.code_from_number(e.error_code), client_message(e)) from e
        except (ValueError, TypeError, KeyError) as e:
            raise status.invalid_argument(client_message(e)) from e
        return {alias: np.asarray(value) for alias, value in zip(output_aliases, values)}

    @property
    def closed(self) -> bool:
        """True once the session has been released; :meth:`run` then raises UNAVAILABLE."""
        return not self._release.alive

    def close(self):
        """Releases the session (its graph, variables and thread pools) now; idempotent."""
        self._release()


def _close_session(session, what: str):
    _LOG.info("Releasing the session of %s", what)
    session.close()
