"""The TensorFlow Serving API protobuf modules, importable without TensorFlow.

The generated ``tensorflow_serving.apis.*_pb2`` modules import pure-protobuf
modules such as ``tensorflow.core.framework.tensor_pb2``. Importing any
``tensorflow.*`` submodule normally executes ``tensorflow/__init__.py`` first,
which loads the whole TensorFlow runtime (seconds of start-up, hundreds of MB).
The web app talks to the model server through :mod:`serving.client` and must
stay free of TensorFlow, so :func:`load` imports those ``*_pb2`` files through
a bare placeholder for the ``tensorflow`` package that is removed again as soon
as the imports are done: the protobuf files are plain data and do not need the
runtime, and a later ``import tensorflow`` (if the process ever does one) runs
the real package initialiser as usual and reuses the already-imported protobuf
modules.

Nothing is imported at module import time; call :func:`load`.
"""

import importlib
import importlib.machinery
import importlib.util
import sys
import threading
import types
from dataclasses import dataclass

_TF_PACKAGE = "tensorflow"
_LOCK = threading.Lock()
_LOADED = None


@dataclass(frozen=True)
class ServingProtos:
    """The protobuf and gRPC modules of the TensorFlow Serving API.

    Attributes mirror the module names in ``tensorflow_serving.apis``.
    """

    classification_pb2: types.ModuleType
    get_model_metadata_pb2: types.ModuleType
    get_model_status_pb2: types.ModuleType
    inference_pb2: types.ModuleType
    input_pb2: types.ModuleType
    model_pb2: types.ModuleType
    model_service_pb2_grpc: types.ModuleType
    predict_pb2: types.ModuleType
    regression_pb2: types.ModuleType
    prediction_service_pb2_grpc: types.ModuleType
    model_server_config_pb2: types.ModuleType
    tensor_pb2: types.ModuleType
    tensor_shape_pb2: types.ModuleType
    types_pb2: types.ModuleType
    example_pb2: types.ModuleType
    feature_pb2: types.ModuleType
    meta_graph_pb2: types.ModuleType
    saved_model_pb2: types.ModuleType


_MODULES = {
    "classification_pb2": "tensorflow_serving.apis.classification_pb2",
    "get_model_metadata_pb2": "tensorflow_serving.apis.get_model_metadata_pb2",
    "get_model_status_pb2": "tensorflow_serving.apis.get_model_status_pb2",
    "inference_pb2": "tensorflow_serving.apis.inference_pb2",
    "input_pb2": "tensorflow_serving.apis.input_pb2",
    "model_pb2": "tensorflow_serving.apis.model_pb2",
    "model_service_pb2_grpc": "tensorflow_serving.apis.model_service_pb2_grpc",
    "predict_pb2": "tensorflow_serving.apis.predict_pb2",
    "regression_pb2": "tensorflow_serving.apis.regression_pb2",
    "prediction_service_pb2_grpc": "tensorflow_serving.apis.prediction_service_pb2_grpc",
    "model_server_config_pb2": "tensorflow_serving.config.model_server_config_pb2",
    "tensor_pb2": "tensorflow.core.framework.tensor_pb2",
    "tensor_shape_pb2": "tensorflow.core.framework.tensor_shape_pb2",
    "types_pb2": "tensorflow.core.framework.types_pb2",
    "example_pb2": "tensorflow.core.example.example_pb2",
    "feature_pb2": "tensorflow.core.example.feature_pb2",
    "meta_graph_pb2": "tensorflow.core.protobuf.meta_graph_pb2",
    "saved_model_pb2": "tensorflow.core.protobuf.saved_model_pb2",
}


class ProtosUnavailableError(ImportError):
    """The TensorFlow Serving API protobuf modules cannot be imported."""


def _import_all() -> ServingProtos:
    return ServingProtos(**{attr: importlib.import_module(name) for attr, name in _MODULES.items()})


def _placeholder_package() -> types.ModuleType:
    """Returns a bare ``tensorflow`` package module whose ``__init__`` never runs.

    Raises:
        ProtosUnavailableError: TensorFlow's package directory is not installed.
    """
    spec = importlib.machinery.PathFinder.find_spec(_TF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ProtosUnavailableError(
            "the 'tensorflow' package directory (which holds the protobuf modules the "
            "TensorFlow Serving API depends on) is not installed")
    placeholder = types.ModuleType(_TF_PACKAGE)
    placeholder.__path__ = list(spec.submodule_search_locations)
    placeholder.__spec__ = importlib.machinery.ModuleSpec(_TF_PACKAGE, None, is_package=True)
    placeholder.__spec__.submodule_search_locations = placeholder.__path__
    return placeholder


def load() -> ServingProtos:
    """Imports (once) and returns the TensorFlow Serving API modules.

    When TensorFlow is already imported they are imported normally; otherwise
    without running TensorFlow's package initialiser (see module docstring).

    Returns:
        The modules, cached for the life of the process.

    Raises:
        ProtosUnavailableError: tensorflow-serving-api or TensorFlow's protobuf
            files are not installed.
    """
    global _LOADED
    with _LOCK:
        if _LOADED is not None:
            return _LOADED
        try:
            if _TF_PACKAGE in sys.modules:
                _LOADED = _import_all()
                return _LOADED
            placeholder = _placeholder_package()
            sys.modules[_TF_PACKAGE] = placeholder
            try:
                _LOADED = _import_all()
            finally:
                # Only the placeholder goes: the real package must initialise
                # normally if the process imports TensorFlow later.
                if sys.modules.get(_TF_PACKAGE) is placeholder:
                    del sys.modules[_TF_PACKAGE]
        except ImportError as e:
            if isinstance(e, ProtosUnavailableError):
                raise
            raise ProtosUnavailableError(
                f"cannot import the TensorFlow Serving API protobuf modules: {e}") from e
        return _LOADED
