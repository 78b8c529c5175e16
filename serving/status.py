"""Request errors carrying a canonical status code, shared by gRPC and REST.

The codes are gRPC's canonical codes, which are also TensorFlow's error codes,
so a ``tf.errors.OpError`` maps onto them one to one.
"""

import grpc

# Canonical code -> HTTP status, as TensorFlow Serving's REST API maps them.
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}

# What a client is told about a failure that is a server bug (details go to the log).
INTERNAL_ERROR_TEXT = "Internal error while processing the request"


class ServingStatusError(Exception):
    """A request failed with a canonical status code and a message for the caller.

    Attributes:
        code: the ``grpc.StatusCode``.
        message: text sent to the client, in TensorFlow Serving's wording.
    """

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        """The HTTP status code for the REST API."""
        return _HTTP_STATUS.get(self.code, 500)


def code_from_number(number: int) -> grpc.StatusCode:
    """Returns the status code with a canonical number (UNKNOWN if none)."""
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def invalid_argument(message: str) -> ServingStatusError:
    """Returns an INVALID_ARGUMENT error."""
    return ServingStatusError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingStatusError:
    """Returns a NOT_FOUND error."""
    return ServingStatusError(grpc.StatusCode.NOT_FOUND, message)
