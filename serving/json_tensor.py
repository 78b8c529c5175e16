"""JSON <-> tensor conversion of TensorFlow Serving's REST API.

Requests (``instances`` row format, ``inputs`` columnar format, and the
tf.Example lists of ``:classify``/``:regress``) are checked value by value
against the signature's dtypes with the rules and error texts of TensorFlow
Serving's ``util/json_tensor.cc``: a value that does not fit its dtype
(2147483648 into int32, 1.5 into an integer, 1 into bool, 16777217 into float)
is refused with INVALID_ARGUMENT instead of being wrapped, truncated or cast.
Responses print float32/float64 as that file does (shortest of ``%g``
that reads back to the same value, else ``%.9g``/``%.17g``, with ``.0`` added
to whole numbers), so 2.1f is ``2.1`` and not ``2.0999999046325684``.
"""

import base64
import binascii
import json
import math

import grpc
import numpy as np

from serving import status, tensors

BASE64_KEY = "b64"
BYTES_SUFFIX = "_bytes"

_INT_RANGES = {
    tensors.DT_INT32: (-2 ** 31, 2 ** 31 - 1),
    # TF Serving puts int8/int16/uint8 values into the int32 field and lets
    # TensorFlow cast them (300 into int8 becomes 44); here they must fit.
    tensors.DT_INT16: (-2 ** 15, 2 ** 15 - 1),
    tensors.DT_INT8: (-2 ** 7, 2 ** 7 - 1),
    tensors.DT_UINT8: (0, 2 ** 8 - 1),
    tensors.DT_INT64: (-2 ** 63, 2 ** 63 - 1),
    tensors.DT_UINT32: (0, 2 ** 32 - 1),
    tensors.DT_UINT64: (0, 2 ** 64 - 1),
}
# Largest integer each floating type holds exactly (2**digits - 1).
_MAX_EXACT_INT = {tensors.DT_FLOAT: 2 ** 24 - 1, tensors.DT_DOUBLE: 2 ** 53 - 1}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT64_MAX = 2 ** 63 - 1
_UINT64_MAX = 2 ** 64 - 1


# -- printing ---------------------------------------------------------------

def format_decimal(value, single_precision: bool) -> str:
    """Prints a float as TF Serving's JSON writer does.

    Args:
        value: the number.
        single_precision: True for float32 (9 digits at most), False for float64 (17).

    Returns:
        A JSON number token (``NaN``, ``Infinity`` and ``-Infinity`` for non-finite values).
    """
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = "%g" % value
    if single_precision:
        if np.float32(float(text)) != np.float32(value):
            text = "%.9g" % value
    elif float(text) != value:
        text = "%.17g" % value
    if "." not in text and "e" not in text:
        text += ".0"
    return text


class Decimal:
    """A float to be written by :func:`dumps` with :func:`format_decimal`."""

    __slots__ = ("value", "single")

    def __init__(self, value, single: bool):
        self.value = value
        self.single = single


def _value_text(value) -> str:
    if isinstance(value, Decimal):
        return format_decimal(value.value, value.single)
    if isinstance(value, float):
        return format_decimal(value, single_precision=False)
    if isinstance(value, list):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_value_text(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def dumps(payload: dict) -> str:
    """Writes a response object: one top-level key per line, values on one line."""
    if not payload:
        return "{}"
    lines = [f"    {json.dumps(key)}: {_value_text(value)}" for key, value in payload.items()]
    return "{\n" + ",\n".join(lines) + "\n}"


def _json_text(value) -> str:
    """A JSON value as quoted in TF Serving's error texts (pretty, 4-space indent)."""
    if isinstance(value, float):
        return format_decimal(value, single_precision=False)
    return json.dumps(value, indent=4)


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def format_error(document, *parts) -> status.ServingStatusError:
    """INVALID_ARGUMENT ``JSON Value: <document> <parts>`` (TF Serving's FormatError)."""
    return status.invalid_argument(f"JSON Value: {_json_text(document)} " + "".join(parts))


def wrapped(error: status.ServingStatusError) -> str:
    """The error as absl::Status::ToString prints it, for nesting in another message."""
    return f"{error.code.name}: {error.message}"


# -- parsing ----------------------------------------------------------------

def _innermost_container(text: str, pos: int) -> str:
    """'{' or '[' open at `pos` (strings skipped), to word Python's generic ',' error."""
    stack, in_string, escaped = [], False, False
    for char in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            stack.append(char)
        elif char in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _rapidjson_message(error: json.JSONDecodeError) -> str:
    """Python's decoder message in the words of RapidJSON (TF Serving's parser)."""
    msg = error.msg
    if msg.startswith("Expecting value"):
        return "Invalid value."
    if msg.startswith("Extra data"):
        return "The document root must not be followed by other values."
    if msg.startswith("Expecting property name"):
        return "Missing a name for object member."
    if msg.startswith("Expecting ':'"):
        return "Missing a colon after a name of object member."
    if msg.startswith("Expecting ','"):
        if _innermost_container(error.doc, error.pos) == "{":
            return "Missing a comma or '}' after an object member."
        return "Missing a comma or ']' after an array element."
    if msg.startswith("Unterminated string"):
        return "Missing a closing quotation mark in string."
    if msg.startswith("Invalid \\u"):
        return "Incorrect hex digit after \\u escape in string."
    if msg.startswith("Invalid \\escape"):
        return "Invalid escape character in string."
    if msg.startswith("Invalid control character"):
        return "Invalid encoding in string."
    return msg + "."


def parse_document(body: bytes) -> dict:
    """Parses a request body that must be a JSON object.

    Raises:
        status.ServingStatusError: INVALID_ARGUMENT with TF Serving's text.
    """
    if not body:
        raise status.invalid_argument("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise status.invalid_argument(
            f"JSON Parse error: Invalid encoding in string. at offset: {e.start}") from e
    if not text.strip():
        raise status.invalid_argument("JSON Parse error: The document is empty")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise status.invalid_argument(
            f"JSON Parse error: {_rapidjson_message(e)} at offset: {e.pos}") from e
    except RecursionError as e:
        raise status.invalid_argument("JSON Parse error: The document is nested too deeply") from e
    if not isinstance(document, dict):
        raise format_error(document, "Is not object")
    signature_name = document.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise format_error(document, "not formatted correctly. 'signature_name' key must be a string value.")
    return document


def is_base64_object(value) -> bool:
    """True for ``{"b64": "<string>"}`` (the only key, a string value)."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(BASE64_KEY), str)


def _decode_base64(value) -> bytes:
    if not is_base64_object(value):
        raise status.invalid_argument(
            f"JSON Value: {_json_text(value)} not formatted correctly for base64 data")
    try:
        return base64.b64decode(value[BASE64_KEY], validate=True)
    except (binascii.Error, ValueError) as e:
        raise status.invalid_argument("Unable to base64 decode") from e


def _type_error(value, dtype: int) -> status.ServingStatusError:
    return status.invalid_argument(
        f"JSON Value: {_json_text(value)} Type: {_json_type(value)} is not of expected type: "
        f"{tensors.dtype_name(dtype)}")


def _float_or_inf(value) -> float:
    """abs(value) as a float; infinity for integers beyond the float range."""
    try:
        return abs(float(value))
    except OverflowError:
        return math.inf


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _converted(value, dtype: int):
    """One JSON scalar as a value of `dtype`, or an INVALID_ARGUMENT error."""
    if dtype in _MAX_EXACT_INT:
        if not _is_number(value):
            raise _type_error(value, dtype)
        if isinstance(value, int) and -2 ** 63 <= value <= _UINT64_MAX:
            lossless = abs(value) <= _MAX_EXACT_INT[dtype]
        else:
            magnitude = _float_or_inf(value)
            lossless = (not math.isfinite(magnitude) and isinstance(value, float)) or (
                math.isfinite(magnitude) and (dtype == tensors.DT_DOUBLE or magnitude <= _FLOAT32_MAX))
        if not lossless:
            target = "float" if dtype == tensors.DT_FLOAT else "double"
            raise status.invalid_argument(
                f"Cannot convert JSON value: {_json_text(value)} to {target} without loss of precision.")
        return float(value)
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
            raise _type_error(value, dtype)
        return value
    if dtype == tensors.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if dtype == tensors.DT_STRING:
        if isinstance(value, dict):
            return _decode_base64(value)
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8")
    raise status.ServingStatusError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"Conversion of JSON Value: {_json_text(value)} to type: {tensors.dtype_name(dtype)}")


def _dense_shape(value) -> list:
    """The shape read from the first element at each level of nested lists."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value, level: int, shape: list, dtype: int, out: list):
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise status.invalid_argument(
                f"JSON Value: {_json_text(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {rank}")
        if isinstance(value, dict) and dtype != tensors.DT_STRING:
            raise _type_error(value, dtype)
        out.append(_converted(value, dtype))
        return
    if level >= rank:
        raise status.invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise status.invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}")
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def json_to_array(value, dtype: int) -> np.ndarray:
    """A dense JSON value (scalar or nested lists) as an array of `dtype`.

    Raises:
        status.ServingStatusError: ragged lists, or a value not of the dtype.
    """
    shape = _dense_shape(value)
    flat = []
    _fill(value, 0, shape, dtype, flat)
    if dtype == tensors.DT_STRING:
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    try:
        np_dtype = tensors.numpy_dtype(dtype)
    except tensors.TensorConversionError as e:
        raise status.ServingStatusError(grpc.StatusCode.UNIMPLEMENTED, str(e)) from e
    return np.array(flat, dtype=np_dtype).reshape(shape)


def _shape_text(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def instances_to_arrays(document: dict, infos: dict) -> dict:
    """The ``instances`` (row format) of a predict request as arrays by input alias.

    Args:
        document: the parsed request; holds an ``instances`` key.
        infos: the signature's TensorInfo protos by input alias.

    Raises:
        status.ServingStatusError: INVALID_ARGUMENT with TF Serving's text.
    """
    instances = document["instances"]
    if not isinstance(instances, list):
        raise format_error(document, "Excepting 'instances' to be an list/array")
    if not instances:
        raise format_error(document, "No values in 'instances' array")

    def is_named(item):
        return isinstance(item, dict) and not is_base64_object(item)

    if not isinstance(instances[0], dict) and len(infos) > 1:
        raise status.invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map")
    named = is_named(instances[0])
    names = sorted(infos)
    rows, shapes = {}, {}

    def add(item, name):
        if name not in infos:
            raise status.invalid_argument(f"JSON object: does not have named input: {name}")
        array = json_to_array(item, infos[name].dtype)
        if name not in shapes:
            shapes[name] = array.shape
        elif array.size != int(np.prod(shapes[name], dtype=np.int64)):
            raise status.invalid_argument(
                f"Expecting tensor size: {int(np.prod(shapes[name], dtype=np.int64))} but got: {array.size}")
        elif array.shape != shapes[name]:
            raise status.invalid_argument(
                f"Expecting shape {_shape_text(shapes[name])} but got: {_shape_text(array.shape)}")
        rows.setdefault(name, []).append(array)

    for index, item in enumerate(instances):
        if named:
            if not is_named(item):
                raise status.invalid_argument(f"Expecting object but got list at item {index} of input list")
            for name, value in item.items():
                try:
                    add(value, name)
                except status.ServingStatusError as e:
                    raise status.invalid_argument(
                        f"Failed to process element: {index} key: {name} of 'instances' list. "
                        f"Error: {wrapped(e)}") from e
            if sorted(item) != names:
                raise status.invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{_json_text(item)} must only have keys: {','.join(names)}")
        else:
            if is_named(item):
                raise status.invalid_argument(
                    f"Expecting value/list but got object at item {index} of input list")
            try:
                add(item, names[0])
            except status.ServingStatusError as e:
                raise status.invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. Error: {wrapped(e)}") from e
    return {name: np.stack(arrays) for name, arrays in rows.items()}


def inputs_to_arrays(document: dict, infos: dict) -> dict:
    """The ``inputs`` (columnar format) of a predict request as arrays by input alias.

    Keys of an ``inputs`` object that the signature does not have are ignored,
    as TF Serving ignores them.

    Raises:
        status.ServingStatusError: INVALID_ARGUMENT with TF Serving's text.
    """
    value = document["inputs"]
    if not isinstance(value, dict) or is_base64_object(value):
        if len(infos) > 1:
            raise status.invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                "required as per tensorinfo_map")
        name = next(iter(infos))
        return {name: json_to_array(value, infos[name].dtype)}
    arrays = {}
    for name in sorted(infos):
        if name not in value:
            raise status.invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = json_to_array(value[name], infos[name].dtype)
    return arrays


def _feature_kind_error(name: str, kind: str) -> status.ServingStatusError:
    return status.invalid_argument(f"Unexpected element type in feature: {name} expecting type: {kind}")


def _add_to_feature(value, name: str, lists: dict):
    """Appends one JSON value to a feature being built as {kind: [values]}."""
    kind = next(iter(lists), None)

    def append(wanted, item):
        if kind is not None and kind != wanted:
            raise _feature_kind_error(name, kind)
        lists.setdefault(wanted, []).append(item)

    if value is None or isinstance(value, list) or (isinstance(value, dict) and not is_base64_object(value)):
        raise status.invalid_argument(
            f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}")
    if isinstance(value, bool):
        append("int64", int(value))
    elif isinstance(value, dict):
        if kind is not None and kind != "bytes":
            raise _feature_kind_error(name, kind)
        append("bytes", _decode_base64(value))
    elif isinstance(value, str):
        append("bytes", value.encode("utf-8"))
    elif isinstance(value, float) or value > _UINT64_MAX or value < -2 ** 63:
        if kind is not None and kind != "float":
            raise _feature_kind_error(name, kind)
        magnitude = _float_or_inf(value)
        if (math.isfinite(magnitude) and magnitude > _FLOAT32_MAX) or (
                not math.isfinite(magnitude) and not isinstance(value, float)):
            raise status.invalid_argument(
                f"Cannot convert JSON value: {_json_text(value)} to float without loss of precision.")
        append("float", float(value))
    else:
        if kind is not None and kind != "int64":
            raise _feature_kind_error(name, kind)
        if value > _INT64_MAX:
            raise status.invalid_argument(f"Feature: {name} has uint64 element. Only int64 is supported.")
        append("int64", value)


def fill_example(example, value):
    """Fills a tf.Example from a JSON object of features (TF Serving's rules).

    Raises:
        status.ServingStatusError: INVALID_ARGUMENT with TF Serving's text.
    """
    if not isinstance(value, dict):
        raise status.invalid_argument(f"Example must be JSON object but got JSON {_json_type(value)}")
    for name, content in value.items():
        lists = {}
        for item in content if isinstance(content, list) else [content]:
            _add_to_feature(item, name, lists)
        feature = example.features.feature[name]
        feature.Clear()
        for kind, items in lists.items():
            getattr(feature, f"{kind}_list").value.extend(items)


def fill_example_input(document: dict, input_proto):
    """Fills an Input proto from a classify/regress request's ``context`` and ``examples``.

    Raises:
        status.ServingStatusError: INVALID_ARGUMENT with TF Serving's text.
    """
    has_context = "context" in document
    if has_context:
        fill_example(input_proto.example_list_with_context.context, document["context"])
    examples = document.get("examples")
    if "examples" not in document:
        # TF Serving words this error so for :regress too.
        raise format_error(document, "When method is classify, key 'examples' is expected and was not found")
    if not isinstance(examples, list):
        raise format_error(document, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise format_error(document, "'examples' value is an empty array")
    target = input_proto.example_list_with_context if has_context else input_proto.example_list
    for value in examples:
        fill_example(target.examples.add(), value)


# -- responses --------------------------------------------------------------

def array_to_json(array: np.ndarray, name: str):
    """A tensor as nested JSON lists (strings as text, or ``{"b64": ...}`` for names
    ending in ``_bytes``; floats as :class:`Decimal`)."""
    if array.dtype == object:
        if name.endswith(BYTES_SUFFIX):
            def convert(v):
                return {BASE64_KEY: base64.b64encode(bytes(v)).decode("ascii")}
        else:
            def convert(v):
                return bytes(v).decode("utf-8", "replace")
    elif array.dtype in (np.float32, np.float16, np.float64):
        single = array.dtype != np.float64

        def convert(v):
            return Decimal(v, single)
    else:
        return array.tolist()
    flat = [convert(v) for v in array.reshape(-1)]
    if array.ndim == 0:
        return flat[0]
    nested = np.empty(len(flat), dtype=object)
    nested[:] = flat
    return nested.reshape(array.shape).tolist()


def row_predictions(outputs: dict) -> list:
    """``predictions`` of the row format: item i of every output tensor, together.

    Raises:
        status.ServingStatusError: an output without a batch dimension, or batch sizes differ.
    """
    batch = 0
    for name in sorted(outputs):
        array = outputs[name]
        if array.ndim == 0:
            raise status.invalid_argument(f"Tensor name: {name} has no shape information ")
        if array.shape[0] < 1:
            raise status.invalid_argument(f"Tensor name: {name} has invalid batch size: {array.shape[0]}")
        if batch and array.shape[0] != batch:
            raise status.invalid_argument(
                f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch}")
        batch = array.shape[0]
    converted = {name: array_to_json(outputs[name], name) for name in sorted(outputs)}
    if len(converted) == 1:
        return next(iter(converted.values()))
    return [{name: values[i] for name, values in converted.items()} for i in range(batch)]


def columnar_outputs(outputs: dict):
    """``outputs`` of the columnar format: the tensor, or an object of tensors by name."""
    if len(outputs) == 1:
        name, array = next(iter(outputs.items()))
        return array_to_json(array, name)
    return {name: array_to_json(outputs[name], name) for name in sorted(outputs)}
