"""One loaded SavedModel version and the running of its signatures.

The SignatureDefs are read from ``saved_model.pb`` itself, exactly as
TensorFlow Serving reports them in GetModelMetadata; the signatures are run
through ``tf.saved_model.load``, which handles TF2 and TF1 SavedModels alike.
"""

import logging
import os

import grpc
import numpy as np

from serving import protos, status

_LOG = logging.getLogger(__name__)

SERVE_TAG = "serve"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


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
        """Loads the SavedModel in ``path``.

        Raises:
            ServableLoadError: the directory does not hold a loadable SavedModel.
        """
        self.name = name
        self.version = version
        self.path = path
        self.signature_defs = read_signature_defs(path)
        tf = _tf()
        try:
            self._loaded = tf.saved_model.load(path, tags=[SERVE_TAG])
        except tf.errors.OpError as e:
            raise ServableLoadError(e.message, status.code_from_number(e.error_code)) from e
        except (ValueError, OSError, KeyError, TypeError) as e:
            raise ServableLoadError(f"cannot load SavedModel {path}: {e}") from e
        self._functions = {}
        for key in self.signature_defs:
            if key in self._loaded.signatures:
                self._functions[key] = self._loaded.signatures[key]

    def run(self, signature_name: str, inputs: dict, output_aliases) -> dict:
        """Runs a signature.

        Args:
            signature_name: a key of :attr:`signature_defs`.
            inputs: numpy arrays by input alias, of the signature's dtypes.
            output_aliases: which outputs to return.

        Returns:
            numpy arrays by output alias (object arrays of bytes for strings).

        Raises:
            status.ServingStatusError: the signature cannot run or TensorFlow
                rejected the inputs (code taken from TensorFlow's error).
        """
        tf = _tf()
        function = self._functions.get(signature_name)
        if function is None:
            raise status.ServingStatusError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Serving signature key \"{signature_name}\" cannot be run by this server")
        signature = self.signature_defs[signature_name]
        feeds = {}
        for alias, array in inputs.items():
            dtype = tf.dtypes.as_dtype(signature.inputs[alias].dtype)
            feeds[alias] = tf.constant(array, dtype=dtype)
        try:
            outputs = function(**feeds)
        except tf.errors.OpError as e:
            raise status.ServingStatusError(status.code_from_number(e.error_code), e.message) from e
        except (ValueError, TypeError) as e:
            raise status.invalid_argument(str(e)) from e
        result = {}
        for alias in output_aliases:
            value = outputs[alias].numpy()
            result[alias] = value if value.dtype != object else np.asarray(value, dtype=object)
        return result

