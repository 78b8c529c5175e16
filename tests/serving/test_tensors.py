"""TensorProto <-> numpy conversion (serving.tensors), as TensorFlow's Tensor::FromProto decodes."""

import numpy as np
import pytest

from serving import protos, tensors


@pytest.fixture(scope="module")
def tensor_pb2():
    return protos.load().tensor_pb2


def _string_proto(tensor_pb2, values, shape):
    proto = tensor_pb2.TensorProto(dtype=tensors.DT_STRING)
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    proto.string_val.extend(values)
    return proto


@pytest.mark.parametrize("values, shape, expected", [
    ([b"png-1", b"png-2"], [2], [b"png-1", b"png-2"]),  # every value sent
    ([b"a", b"b", b"c", b"d"], [2, 2], [[b"a", b"b"], [b"c", b"d"]]),
    ([b"only"], [], b"only"),  # a scalar
    ([b"x", b"y"], [4], [b"x", b"y", b"y", b"y"]),  # fewer values: the last one repeats
    ([], [3], [b"", b"", b""]),  # no values: empty strings
    ([], [0, 5], np.empty((0, 5), dtype=object)),
])
def test_string_tensor_decodes_to_object_array_of_bytes(tensor_pb2, values, shape, expected):
    array = tensors.to_ndarray(_string_proto(tensor_pb2, values, shape))
    expected = np.array(expected, dtype=object)
    assert array.dtype == object
    assert array.shape == tuple(shape) == expected.shape
    assert all(type(v) is bytes for v in array.reshape(-1))  # pylint: disable=unidiomatic-typecheck
    assert array.tolist() == expected.tolist()


def test_string_tensor_with_more_values_than_its_shape_is_refused(tensor_pb2):
    with pytest.raises(tensors.TensorConversionError, match="3 values, shape \\[2\\] has room for 2"):
        tensors.to_ndarray(_string_proto(tensor_pb2, [b"a", b"b", b"c"], [2]))


def test_negative_dimension_is_refused(tensor_pb2):
    with pytest.raises(tensors.TensorConversionError, match=r"shape \[1, -2\] has a negative dimension"):
        tensors.to_ndarray(_string_proto(tensor_pb2, [b"a"], [1, -2]))


def test_large_string_value_is_decoded_unchanged(tensor_pb2):
    image = bytes(range(256)) * 200  # the size of a request's PNG
    array = tensors.to_ndarray(_string_proto(tensor_pb2, [image], [1]))
    assert array.shape == (1,) and array[0] == image


@pytest.mark.parametrize("array, dtype, field", [
    (np.array([[0.25, 0.5, 0.125, 0.0625, 0.0625]], dtype=np.float32), tensors.DT_FLOAT, "float_val"),
    (np.array([3], dtype=np.int64), tensors.DT_INT64, "int64_val"),
    (np.array([True], dtype=np.bool_), tensors.DT_BOOL, "bool_val"),
    (np.array([b"low contrast"], dtype=object), tensors.DT_STRING, "string_val"),
])
def test_typed_field_encoding_round_trips(tensor_pb2, array, dtype, field):
    proto = tensor_pb2.TensorProto()
    tensors.fill_tensor_proto(proto, array, dtype, as_content=False)
    assert proto.dtype == dtype
    assert [d.size for d in proto.tensor_shape.dim] == list(array.shape)
    assert not proto.tensor_content and len(getattr(proto, field)) == array.size
    decoded = tensors.to_ndarray(proto)
    assert decoded.shape == array.shape and decoded.tolist() == array.tolist()
