"""Conversion between ``tensorflow.TensorProto`` messages and numpy arrays.

Written against the protobuf definitions only (no TensorFlow import) so the
client can use it in processes without TensorFlow. The decoding rules follow
TensorFlow's ``Tensor::FromProto``: ``tensor_content`` must hold exactly the
tensor's bytes; otherwise the typed ``*_val`` field may hold fewer values than
the shape needs, in which case the last value is repeated (and an empty field
means all zeros), but never more.
"""

import math

import numpy as np

# tensorflow/core/framework/types.proto enum values, with the typed repeated
# field TensorFlow uses for each when the tensor is sent as proto fields.
DT_FLOAT = 1
DT_DOUBLE = 2
DT_INT32 = 3
DT_UINT8 = 4
DT_INT16 = 5
DT_INT8 = 6
DT_STRING = 7
DT_INT64 = 9
DT_BOOL = 10
DT_UINT16 = 17
DT_HALF = 19
DT_UINT32 = 22
DT_UINT64 = 23

_NUMPY_BY_DTYPE = {
    DT_FLOAT: np.dtype(np.float32),
    DT_DOUBLE: np.dtype(np.float64),
    DT_INT32: np.dtype(np.int32),
    DT_UINT8: np.dtype(np.uint8),
    DT_INT16: np.dtype(np.int16),
    DT_INT8: np.dtype(np.int8),
    DT_STRING: np.dtype(object),
    DT_INT64: np.dtype(np.int64),
    DT_BOOL: np.dtype(np.bool_),
    DT_UINT16: np.dtype(np.uint16),
    DT_HALF: np.dtype(np.float16),
    DT_UINT32: np.dtype(np.uint32),
    DT_UINT64: np.dtype(np.uint64),
}

_VAL_FIELD_BY_DTYPE = {
    DT_FLOAT: "float_val",
    DT_DOUBLE: "double_val",
    DT_INT32: "int_val",
    DT_UINT8: "int_val",
    DT_INT16: "int_val",
    DT_INT8: "int_val",
    DT_STRING: "string_val",
    DT_INT64: "int64_val",
    DT_BOOL: "bool_val",
    DT_UINT16: "int_val",
    DT_HALF: "half_val",
    DT_UINT32: "uint32_val",
    DT_UINT64: "uint64_val",
}

# Lower-case names as TensorFlow prints them in error messages.
DTYPE_NAMES = {
    DT_FLOAT: "float",
    DT_DOUBLE: "double",
    DT_INT32: "int32",
    DT_UINT8: "uint8",
    DT_INT16: "int16",
    DT_INT8: "int8",
    DT_STRING: "string",
    DT_INT64: "int64",
    DT_BOOL: "bool",
    DT_UINT16: "uint16",
    DT_HALF: "half",
    DT_UINT32: "uint32",
    DT_UINT64: "uint64",
}


class TensorConversionError(ValueError):
    """A TensorProto or array cannot be converted."""


def dtype_name(dtype: int) -> str:
    """Returns TensorFlow's printable name of a DataType enum value."""
    return DTYPE_NAMES.get(dtype, f"<DataType {dtype}>")


def numpy_dtype(dtype: int) -> np.dtype:
    """Returns the numpy dtype for a DataType enum value.

    Raises:
        TensorConversionError: the DataType is not supported here.
    """
    try:
        return _NUMPY_BY_DTYPE[dtype]
    except KeyError:
        raise TensorConversionError(f"unsupported tensor dtype {dtype_name(dtype)}") from None


def dtype_of(array: np.ndarray) -> int:
    """Returns the DataType enum value for a numpy array's dtype.

    Raises:
        TensorConversionError: no TensorFlow dtype matches.
    """
    if array.dtype.kind in ("O", "S", "U"):
        return DT_STRING
    for dtype, np_dtype in _NUMPY_BY_DTYPE.items():
        if np_dtype == array.dtype and dtype != DT_STRING:
            return dtype
    raise TensorConversionError(f"no TensorFlow dtype for numpy dtype {array.dtype}")


def to_ndarray(proto) -> np.ndarray:
    """Decodes a TensorProto into a numpy array (object dtype of bytes for strings).

    Args:
        proto: a ``tensorflow.TensorProto``.

    Returns:
        The array, with the proto's shape.

    Raises:
        TensorConversionError: unknown dtype, unknown rank or negative
            dimensions, or a content size that does not match the shape.
    """
    np_dtype = numpy_dtype(proto.dtype)
    if proto.tensor_shape.unknown_rank:
        raise TensorConversionError("tensor has unknown rank")
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if shape and min(shape) < 0:
        raise TensorConversionError(f"tensor shape {shape} has a negative dimension")
    count = math.prod(shape)  # exact (Python ints); numpy's reduction costs more per request
    if proto.dtype != DT_STRING and proto.tensor_content:
        if len(proto.tensor_content) != count * np_dtype.itemsize:
            raise TensorConversionError(
                f"tensor_content holds {len(proto.tensor_content)} bytes, shape {shape} "
                f"of {dtype_name(proto.dtype)} needs {count * np_dtype.itemsize}")
        return np.frombuffer(proto.tensor_content, dtype=np_dtype).reshape(shape).copy()
    values = getattr(proto, _VAL_FIELD_BY_DTYPE[proto.dtype])
    if len(values) > count:
        raise TensorConversionError(
            f"tensor holds {len(values)} values, shape {shape} has room for {count}")
    if proto.dtype == DT_STRING:
        if len(values) == count:
            # The usual case. Each value is copied once, from the message into a
            # Python bytes object (a request's image of tens of KB); filling a
            # preallocated array would copy the last value again.
            return np.array(list(values), dtype=object).reshape(shape)
        flat = np.empty(count, dtype=object)
        if values:
            flat[: len(values)] = list(values)
            flat[len(values):] = values[-1]
        else:
            flat[:] = b""
        return flat.reshape(shape)
    if proto.dtype == DT_HALF:
        raw = np.asarray(list(values), dtype=np.uint16).view(np.float16)
    else:
        raw = np.asarray(list(values), dtype=np_dtype)
    if len(raw) == count:  # the usual case: every value sent, nothing to repeat
        return raw.reshape(shape)
    flat = np.zeros(count, dtype=np_dtype)
    if len(raw):
        flat[: len(raw)] = raw
        flat[len(raw):] = raw[-1]
    return flat.reshape(shape)


def to_tensor_proto(values, tensor_proto_cls, dtype: int = None, *, as_content: bool = True):
    """Encodes an array-like as a TensorProto.

    Args:
        values: array-like; ``bytes``/``str`` items become DT_STRING.
        tensor_proto_cls: the ``TensorProto`` class (from :mod:`serving.protos`).
        dtype: DataType to encode as; by default inferred from the array.
        as_content: pack numbers into ``tensor_content`` (compact); False uses
            the typed ``*_val`` fields, as TensorFlow Serving does in responses.

    Returns:
        A new TensorProto.

    Raises:
        TensorConversionError: the values cannot be represented.
    """
    proto = tensor_proto_cls()
    fill_tensor_proto(proto, values, dtype, as_content=as_content)
    return proto


def fill_tensor_proto(proto, values, dtype: int = None, *, as_content: bool = True) -> None:
    """Encodes an array-like into an empty TensorProto in place, such as a map entry
    of a response (saves building a separate message and copying it).

    Args and errors as :func:`to_tensor_proto`; `proto` is the message to fill.
    """
    if isinstance(values, np.ndarray):
        array = values
    elif isinstance(values, (bytes, str)):
        array = np.array(values, dtype=object)
    else:
        array = np.asarray(values)
    if dtype is None:
        dtype = dtype_of(array)
    proto.dtype = dtype
    dims = proto.tensor_shape.dim
    for size in array.shape:
        dims.add().size = size  # cheaper than add(size=...) with the C++ protobuf
    flat = array.reshape(-1)
    if dtype == DT_STRING:
        proto.string_val.extend([v if isinstance(v, bytes) else v.encode("utf-8") if isinstance(v, str)
                                 else bytes(v) for v in flat])
        return
    np_dtype = numpy_dtype(dtype)
    try:
        typed = flat if flat.dtype == np_dtype else flat.astype(np_dtype)
    except (TypeError, ValueError) as e:
        raise TensorConversionError(f"cannot encode values as {dtype_name(dtype)}: {e}") from e
    if as_content:
        proto.tensor_content = typed.tobytes()
    elif dtype == DT_HALF:
        proto.half_val.extend(typed.view(np.uint16).tolist())
    else:
        getattr(proto, _VAL_FIELD_BY_DTYPE[dtype]).extend(typed.tolist())
