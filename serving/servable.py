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

Before anything of a version is read, every entry below its directory is
checked with ``stat`` (symlinks followed): a SavedModel holds only regular
files and directories, and an entry of any other kind (a named pipe, which
blocks its reader forever, a socket, a device) fails the load with an error
naming it. Such an entry is never opened.
"""

import logging
import os
import re
import stat
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


# What a non-regular, non-directory entry is, for the load error.
_FILE_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFSOCK: "a socket",
               stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def walk_version(path: str):
    """Yields every entry below a version directory, without opening any file.

    Symlinks are followed, as the loader follows them; each directory is listed
    once, so a symlink loop ends. Only directories are opened (to list them).

    Args:
        path: the version directory.

    Yields:
        (path relative to ``path``, ``os.stat_result`` or None when the entry
        cannot be stat'ed, e.g. a dangling symlink), depth first in name order.
    """
    try:
        root = os.stat(path)
    except OSError:
        return
    seen = {(root.st_dev, root.st_ino)}
    pending = [""]
    while pending:
        relative = pending.pop()
        try:
            with os.scandir(os.path.join(path, relative)) as entries:
                names = sorted(entry.name for entry in entries)
        except OSError:
            continue  # unreadable directory: the loader reports what it misses
        subdirectories = []
        for name in names:
            child = os.path.join(relative, name)
            try:
                st = os.stat(os.path.join(path, child))
            except OSError:
                st = None
            yield child, st
            if st is not None and stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                subdirectories.append(child)
        pending.extend(reversed(subdirectories))


def _not_regular(full_path: str, st: os.stat_result) -> str:
    """The error text for an entry that is neither a regular file nor a directory."""
    kind = _FILE_KINDS.get(stat.S_IFMT(st.st_mode), f"of file type {stat.S_IFMT(st.st_mode):#o}")
    link = f" (a symlink to {os.path.realpath(full_path)})" if os.path.islink(full_path) else ""
    return (f"{full_path}{link} is not a regular file but {kind}; a SavedModel holds only "
            f"regular files and directories")


def check_regular_files(path: str):
    """Checks that a version directory holds only regular files and directories.

    Nothing is opened: a named pipe would block its reader forever and a device
    or socket is no SavedModel file, so such an entry must be refused before the
    loader (or warmup) reads the version. Entries that cannot be stat'ed are left
    to the loader, which reports the files it needs and cannot read.

    Raises:
        ServableLoadError: FAILED_PRECONDITION naming the first such entry.
    """
    for relative, st in walk_version(path):
        if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise ServableLoadError(_not_regular(os.path.join(path, relative), st),
                                    grpc.StatusCode.FAILED_PRECONDITION)


def regular_file_problem(path: str):
    """Returns why ``path`` must not be opened (it exists and is not a regular file), or None.

    None also when it cannot be stat'ed: opening it then fails without blocking.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return None if stat.S_ISREG(st.st_mode) else _not_regular(path, st)


def _read_regular_file(path: str) -> bytes:
    """Reads a file that must be a regular file, never blocking on a named pipe.

    The type is checked before opening; the open is non-blocking and the type
    checked again on the descriptor, in case the file was replaced in between.

    Raises:
        ServableLoadError: FAILED_PRECONDITION when it is not a regular file.
        OSError: it cannot be opened or read.
    """
    problem = regular_file_problem(path)
    if problem is None:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(descriptor, "rb") as f:
            st = os.fstat(descriptor)
            if stat.S_ISREG(st.st_mode):
                return f.read()
            problem = _not_regular(path, st)
    raise ServableLoadError(problem, grpc.StatusCode.FAILED_PRECONDITION)


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
        ServableLoadError: no ``saved_model.pb``, not a regular file, unparsable,
            or no ``serve`` MetaGraph.
    """
    pb_path = os.path.join(path, "saved_model.pb")
    p = protos.load()
    try:
        saved_model = p.saved_model_pb2.SavedModel.FromString(_read_regular_file(pb_path))
    except ServableLoadError:
        raise
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
        output_dtypes: by signature key, each output alias's DataType enum value
            (read once here: a protobuf map lookup per output and request costs
            more than the dict).
    """

    def __init__(self, name: str, version: int, path: str, session_config=None):
        """Loads the SavedModel in ``path`` into a session of its own.

        ``session_config`` is the Session's ``tensorflow.ConfigProto``
        (``--tensorflow_session_config_file``); None takes TensorFlow's defaults. Its
        thread-pool settings (thread counts, spinning) take effect only if this is the
        first Session or TensorFlow device of the process: TensorFlow builds its CPU
        pools once per process (``ConfigProto`` documentation), as in TF Serving, where
        every model gets the same config.

        Raises:
            ServableLoadError: the directory does not hold a loadable SavedModel,
                or holds an entry that is not a regular file or directory.
        """
        self.name = name
        self.version = version
        self.path = path
        check_regular_files(path)
        self.signature_defs = read_signature_defs(path)
        self.output_dtypes = {key: {alias: info.dtype for alias, info in signature.outputs.items()}
                              for key, signature in self.signature_defs.items()}
        tf = _tf()
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph, config=session_config)
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
        function = self._callables.get(key)  # made once; later requests need no lock
        if function is not None:
            return function
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
        # TensorFlow's error class is looked up only when something was raised.
        except _tf().errors.OpError as e:
            raise status.ServingStatusError(status.code_from_number(e.error_code), client_message(e)) from e
        except (ValueError, TypeError, KeyError) as e:
            raise status.invalid_argument(client_message(e)) from e
        # The callable returns ndarrays; np.asarray only for anything else.
        return {alias: value if type(value) is np.ndarray else np.asarray(value)  # pylint: disable=unidiomatic-typecheck
                for alias, value in zip(output_aliases, values)}

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
