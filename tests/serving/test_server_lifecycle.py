"""The project's server as a process: hot swap under load, graceful shutdown, flags.

These start their own servers (they change model directories or stop the
server), so they only run against the project's server.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from google.protobuf import text_format

from components import features
from serving import protos, tensors
from serving_fixtures import REPO_ROOT, free_port, png_bytes, start_server

THREADS = 8
REQUESTS_PER_THREAD = 200
IMAGE = png_bytes(31)


def _request(p, images, signature="serving_default"):
    request = p.predict_pb2.PredictRequest()
    request.model_spec.name = "koa"
    request.model_spec.signature_name = signature
    request.inputs[features.SERVING_INPUT].CopyFrom(
        tensors.to_tensor_proto(np.array(images, dtype=object), p.tensor_pb2.TensorProto))
    return request


def _version_states(p, channel):
    request = p.get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "koa"
    response = p.model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    return {s.version: s.state for s in response.model_version_status}


def test_hot_swap_under_load_with_batching(tmp_path, models_dir, reference):
    base = tmp_path / "koa"
    shutil.copytree(os.path.join(models_dir, "koa", "1"), base / "1")
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 2000 }\n"
                        "num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 100 }\n")
    process, target, _ = start_server(tmp_path, [
        "--model_name=koa", f"--model_base_path={base}", "--file_system_poll_wait_seconds=1",
        "--enable_batching", f"--batching_parameters_file={batching}"])
    expected = {v: reference(v, [IMAGE])[features.PROBABILITIES_OUTPUT][0] for v in (1, 2)}
    p = protos.load()
    swapped = threading.Event()
    failures, seen = [], []
    lock = threading.Lock()

    def client():
        with grpc.insecure_channel(target) as channel:
            stub = p.prediction_service_pb2_grpc.PredictionServiceStub(channel)
            sent = 0
            # At least REQUESTS_PER_THREAD each, and keep going until the swap
            # is over, so requests are in flight before, during and after it.
            while sent < REQUESTS_PER_THREAD or not swapped.is_set():
                sent += 1
                try:
                    response = stub.Predict(_request(p, [IMAGE]), timeout=60)
                except grpc.RpcError as e:
                    with lock:
                        failures.append(f"{e.code()}: {e.details()}")
                    continue
                version = response.model_spec.version.value
                probabilities = tensors.to_ndarray(response.outputs[features.PROBABILITIES_OUTPUT])[0]
                with lock:
                    seen.append(version)
                    if version not in expected or not np.allclose(probabilities, expected[version], rtol=1e-5):
                        failures.append(f"version {version} answered {probabilities}")

    threads = [threading.Thread(target=client) for _ in range(THREADS)]
    try:
        for thread in threads:
            thread.start()
        staging = tmp_path / "staging-2"
        shutil.copytree(os.path.join(models_dir, "koa", "2"), staging)
        os.rename(staging, base / "2")  # how the pipeline's pusher publishes a version
        with grpc.insecure_channel(target) as channel:
            deadline = time.monotonic() + 120
            while _version_states(p, channel) != {1: 50, 2: 30}:  # 1 END, 2 AVAILABLE
                assert time.monotonic() < deadline, "version 2 did not replace version 1"
                time.sleep(0.2)
        swapped.set()
        for thread in threads:
            thread.join()
    finally:
        swapped.set()
        code = process.stop()

    assert failures == []
    assert len(seen) >= THREADS * REQUESTS_PER_THREAD
    assert set(seen) == {1, 2}
    assert code == 0


def test_shutdown_drains_in_flight_requests(tmp_path, models_dir, reference):
    base = tmp_path / "koa"
    shutil.copytree(os.path.join(models_dir, "koa", "2"), base / "2")
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/metrics" }\n')
    # A batch that only closes after a minute holds the requests in flight
    # until the server is told to stop; shutdown must still answer them all.
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 64 }\nbatch_timeout_micros { value: 60000000 }\n")
    process, target, rest_url = start_server(tmp_path, [
        "--model_name=koa", f"--model_base_path={base}", f"--monitoring_config_file={monitoring}",
        "--enable_batching", f"--batching_parameters_file={batching}"])
    p = protos.load()
    expected = reference(2, [IMAGE])[features.PROBABILITIES_OUTPUT][0]
    results = []

    def grpc_call():
        with grpc.insecure_channel(target) as channel:
            stub = p.prediction_service_pb2_grpc.PredictionServiceStub(channel)
            try:
                response = stub.Predict(_request(p, [IMAGE]), timeout=120)
                results.append(tensors.to_ndarray(response.outputs[features.PROBABILITIES_OUTPUT])[0])
            except grpc.RpcError as e:
                results.append(e.code())

    def rest_call():
        body = json.dumps({"instances": [{"b64": base64.b64encode(IMAGE).decode()}]}).encode()
        request = urllib.request.Request(rest_url + "/v1/models/koa:predict", data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                results.append(np.array(json.loads(response.read())["predictions"][0]["probabilities"]))
        except OSError as e:
            results.append(e)

    def requests_in_flight():
        with urllib.request.urlopen(rest_url + "/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("koa_serving_requests_in_flight "):
                    return float(line.split()[1])
        return 0.0

    threads = [threading.Thread(target=grpc_call) for _ in range(3)] + [threading.Thread(target=rest_call)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 50
        while requests_in_flight() < len(threads):
            assert time.monotonic() < deadline, "requests never reached the server"
            time.sleep(0.05)
        process.terminate()
        for thread in threads:
            thread.join()
    finally:
        code = process.stop()

    assert len(results) == len(threads)
    for result in results:
        assert isinstance(result, np.ndarray), result
        np.testing.assert_allclose(result, expected, rtol=1e-5)
    assert code == 0
    assert "Server stopped" in process.log()
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as info:
        p.prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(_request(p, [IMAGE]), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("args, message", [
    (["--model_base_path=/tmp/x", "--port=eighty"], "Couldn't interpret value eighty for flag port"),
    (["--port=8500"], "Both server_options.model_base_path and server_options.model_config_file are empty!"),
    (["--model_base_path=/tmp/x", "--ssl_config_file=/etc/ssl.config"],
     "--ssl_config_file=/etc/ssl.config is not supported by this server"),
])
def test_bad_command_line_is_an_error(args, message):
    result = subprocess.run([sys.executable, "-m", "serving", *args], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    assert result.returncode == 1
    assert message in result.stderr
    assert "--model_config_file" in result.stderr  # the usage text follows


def test_invalid_session_config_file_fails_start_up(tmp_path):
    session = tmp_path / "session.config"
    session.write_text("intra_op_threads: 2")
    result = subprocess.run(
        [sys.executable, "-m", "serving", "--port=0", f"--grpc_socket_path={tmp_path / 'grpc.sock'}",
         f"--model_base_path={tmp_path / 'koa'}", f"--tensorflow_session_config_file={session}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 1
    assert f"Invalid protobuf file: '{session}'" in result.stderr
    assert "intra_op_threads" in result.stderr


def test_unloadable_model_fails_start_up(tmp_path):
    (tmp_path / "koa" / "1").mkdir(parents=True)
    (tmp_path / "koa" / "1" / "saved_model.pb").write_bytes(b"junk")
    result = subprocess.run(
        [sys.executable, "-m", "serving", "--port=0", f"--grpc_socket_path={tmp_path / 'grpc.sock'}",
         f"--model_base_path={tmp_path / 'koa'}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 1
    assert "Some models did not become available: {default}" in result.stderr


def _linear_predict(p, stub, name="linear", x=4.0):
    request = p.predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs["x"].CopyFrom(tensors.to_tensor_proto(np.array([x], dtype=np.float32),
                                                         p.tensor_pb2.TensorProto))
    response = stub.Predict(request, timeout=30)
    return response.model_spec.version.value, list(response.outputs["y"].float_val)


def _config_text(models: dict) -> str:
    entries = "".join(f'  config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" }}\n'
                      for name, path in models.items())
    return f"model_config_list {{\n{entries}}}\n"


def _model_names(p, channel, names) -> dict:
    """{name: sorted AVAILABLE versions, or the NOT_FOUND code} for each model."""
    stub = p.model_service_pb2_grpc.ModelServiceStub(channel)
    result = {}
    for name in names:
        request = p.get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        try:
            response = stub.GetModelStatus(request, timeout=10)
        except grpc.RpcError as e:
            result[name] = e.code()
            continue
        result[name] = sorted(s.version for s in response.model_version_status if s.state == 30)
    return result


def _wait_until(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.2)


def test_model_config_reload_by_request_and_by_file_poll(tmp_path, linear_models):
    """HandleReloadConfigRequest and --model_config_file_poll_wait_seconds add and remove
    models; a config TensorFlow Serving rejects changes nothing; a UNIX socket serves
    gRPC too; requests without a (named) ModelSpec get upstream's errors."""
    from serving import flags
    from serving.server import ModelServer

    p = protos.load()
    from tensorflow_serving.apis import model_management_pb2  # imported by protos.load()

    bases = {}
    for name, version in (("linear", 1), ("other", 3)):
        bases[name] = tmp_path / name
        shutil.copytree(linear_models[version], bases[name] / str(version))
    config = tmp_path / "models.config"
    config.write_text(_config_text({"linear": bases["linear"]}))
    socket_path = tmp_path / "grpc.sock"
    grpc_port = free_port()
    target = f"localhost:{grpc_port}"
    # In-process: a subprocess would spend minutes importing TensorFlow on a busy machine.
    server = ModelServer(flags.parse_flags([
        f"--port={grpc_port}", f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1",
        f"--grpc_socket_path={socket_path}"]))
    server.start()
    model_service = p.model_service_pb2_grpc.ModelServiceStub
    try:
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            stub = p.prediction_service_pb2_grpc.PredictionServiceStub(channel)
            assert _linear_predict(p, stub) == (1, [4.0])

        with grpc.insecure_channel(target) as channel:
            stub = p.prediction_service_pb2_grpc.PredictionServiceStub(channel)
            reload = model_management_pb2.ReloadConfigRequest()
            text_format.Parse(_config_text({"linear": bases["linear"], "other": bases["other"]}), reload.config)
            response = model_service(channel).HandleReloadConfigRequest(reload, timeout=120)
            assert response.status.error_code == 0
            assert _model_names(p, channel, ["linear", "other"]) == {"linear": [1], "other": [3]}
            assert _linear_predict(p, stub, "other") == (3, [9.0])

            for text, message in [
                ('model_config_list { config { name: "x" base_path: "relative/x" model_platform: "tensorflow" } }',
                 "Expected model x to have an absolute path or URI; got base_path()=relative/x"),
                ("custom_model_config {}", "ServerModelConfig type not supported by "
                                           "HandleReloadConfigRequest. Only ModelConfigList is currently supported"),
            ]:
                bad = model_management_pb2.ReloadConfigRequest()
                text_format.Parse(text, bad.config)
                with pytest.raises(grpc.RpcError) as info:
                    model_service(channel).HandleReloadConfigRequest(bad, timeout=30)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert info.value.details() == message
            assert _model_names(p, channel, ["linear", "other"]) == {"linear": [1], "other": [3]}

            # The config file changes: the poller applies it (linear is removed).
            config.write_text(_config_text({"other": bases["other"]}))
            _wait_until(lambda: _model_names(p, channel, ["linear"])["linear"] == grpc.StatusCode.NOT_FOUND)
            assert _linear_predict(p, stub, "other") == (3, [9.0])
            with pytest.raises(grpc.RpcError) as info:
                _linear_predict(p, stub, "linear")
            assert info.value.code() == grpc.StatusCode.NOT_FOUND

            # A ModelSpec without a name is refused in TensorFlow Serving's words.
            with pytest.raises(grpc.RpcError) as info:
                _linear_predict(p, stub, "")
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details() == "ModelSpec has no name specified."
            # ... and a request without a ModelSpec at all.
            for call, request in [
                (stub.Predict, p.predict_pb2.PredictRequest()),
                (stub.Classify, p.classification_pb2.ClassificationRequest()),
                (stub.GetModelMetadata, p.get_model_metadata_pb2.GetModelMetadataRequest(
                    metadata_field=["signature_def"])),
                (model_service(channel).GetModelStatus, p.get_model_status_pb2.GetModelStatusRequest()),
            ]:
                with pytest.raises(grpc.RpcError) as info:
                    call(request, timeout=30)
                assert (info.value.code(), info.value.details()) == (
                    grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    finally:
        server.stop()


def test_unknown_arguments_are_reported_and_start_up_goes_on(tmp_path):
    # The unknown argument is printed with the usage text, then start-up continues
    # (here to the config check, which fails fast on a relative base path).
    result = subprocess.run([sys.executable, "-m", "serving", "--no_such_flag=1", "stray",
                             "--model_base_path=relative/koa"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    assert result.stdout.startswith("unknown argument: --no_such_flag=1\nusage: python -m serving")
    assert result.returncode == 1
    assert "Expected model default to have an absolute path or URI; got base_path()=relative/koa" in result.stderr


def _write_spin_model(export_dir: str):
    """A real model whose cost the request sets: ``n`` int64 [1] -> loops n times."""
    import tensorflow as tf

    class Spin(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="n")])
        def serve(self, n):
            _, total = tf.while_loop(lambda i, acc: i < n[0], lambda i, acc: (i + 1, acc + i % 3),
                                     [tf.constant(0, tf.int64), tf.constant(0, tf.int64)])
            return {"total": tf.reshape(total, [1])}

    module = Spin()
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve})


def _ipv4(hex_le: str) -> str:
    return ".".join(str(int(hex_le[i:i + 2], 16)) for i in (6, 4, 2, 0))


def _listening_addresses(port: int) -> set:
    """Local addresses listening on a TCP port, from /proc/net/tcp and tcp6
    (IPv4-mapped IPv6 addresses shown as IPv4, any other IPv6 address as "ipv6")."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                host, hex_port = local.split(":")
                if state != "0A" or int(hex_port, 16) != port:  # 0A = LISTEN
                    continue
                if len(host) == 8:
                    addresses.add(_ipv4(host))
                elif host.startswith("0000000000000000FFFF0000"):
                    addresses.add(_ipv4(host[24:]))
                else:
                    addresses.add("ipv6")
    return addresses


def test_rest_timeout_and_bind_address(tmp_path):
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("needs Linux's /proc/net/tcp to see listening addresses")
    from serving import flags
    from serving.server import ModelServer

    _write_spin_model(str(tmp_path / "spin" / "1"))
    grpc_port, rest_port = free_port(), free_port()
    server = ModelServer(flags.parse_flags([
        f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--model_name=spin",
        f"--model_base_path={tmp_path / 'spin'}", "--bind_address=127.0.0.1",
        "--rest_api_timeout_in_ms=1000", "--rest_api_num_threads=2"]), shutdown_grace_seconds=60)
    server.start()
    try:
        for port in (grpc_port, rest_port):
            assert _listening_addresses(port) == {"127.0.0.1"}

        def predict(n):
            request = urllib.request.Request(f"http://127.0.0.1:{rest_port}/v1/models/spin:predict",
                                             method="POST", data=json.dumps({"instances": [n]}).encode())
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        assert predict(10) == (200, {"predictions": [9]})
        # Hundreds of thousands of loop steps take seconds, far beyond the 1 s allowed.
        code, body = predict(300000)
        assert code == 504
        assert "--rest_api_timeout_in_ms" in body["error"]
    finally:
        server.stop()
