"""Flag parsing (tensorflow_model_server's rules) and the text-proto config files."""

import numpy as np
import pytest

from serving import flags
from serving import server_config as config


def test_defaults_match_tensorflow_model_server():
    options = flags.parse_flags(["--model_base_path=/models/koa"])
    assert (options.port, options.rest_api_port, options.model_name) == (8500, 0, "default")
    assert options.file_system_poll_wait_seconds == 1
    assert options.enable_batching is False
    assert options.grpc_max_threads > 0


def test_values_and_booleans():
    options = flags.parse_flags([
        "--port=9000", "--rest_api_port=9001", "--model_name=koa", "--model_base_path=/m",
        "--enable_batching", "--batching_parameters_file=/b", "--grpc_max_threads=3",
        "--file_system_poll_wait_seconds=5", "--allow_version_labels_for_unavailable_models=true"])
    assert (options.port, options.rest_api_port, options.model_name) == (9000, 9001, "koa")
    assert options.enable_batching and options.allow_version_labels_for_unavailable_models
    assert (options.grpc_max_threads, options.file_system_poll_wait_seconds) == (3, 5)
    assert flags.parse_flags(["--model_base_path=/m", "--enable_batching=false"]).enable_batching is False
    assert flags.parse_flags(["--help"]) is None


@pytest.mark.parametrize("argv, message", [
    (["--model_base_path=/m", "--enable_batching=maybe"], "Couldn't interpret value maybe"),
    (["--model_base_path=/m", "--port=8x"], "Couldn't interpret value 8x for flag port"),
    (["--model_base_path=/m", "--port=2147483648"], "Couldn't interpret value 2147483648"),
    (["--model_base_path=/m", "--batching_parameters_file=/b"], "requires --enable_batching"),
    ([], "model_base_path and server_options.model_config_file are empty"),
    (["--model_base_path=/m", "--port=0"], "At least one of server_options.grpc_port or "
                                           "server_options.grpc_socket_path must be set"),
    (["--model_base_path=/m", "--model_config_file_poll_wait_seconds=-1"], "must be >= 0"),
    # tensorflow_model_server flags this server does not implement: refused unless
    # given the one value whose behaviour it has.
    (["--model_base_path=/m", "--ssl_config_file=/ssl"], "--ssl_config_file=/ssl is not supported"),
    (["--model_base_path=/m", "--saved_model_tags=serve,tpu"], "implements only --saved_model_tags=serve"),
    (["--model_base_path=/m", "--platform_config_file=/p"], "--platform_config_file=/p is not supported"),
    (["--model_base_path=/m", "--rest_api_enable_cors_support"], "rest_api_enable_cors_support=True is not"),
    (["--model_base_path=/m", "--per_process_gpu_memory_fraction=0.5"], "not supported"),
    (["--model_base_path=/m", "--num_load_threads=zero"], "Couldn't interpret value zero"),
])
def test_invalid_command_lines(argv, message):
    with pytest.raises(flags.FlagError, match=message):
        flags.parse_flags(argv)


def test_unknown_arguments_are_collected_not_fatal():
    # tensorflow_model_server prints "unknown argument: ..." and the usage, then
    # starts anyway; "--port 9000" is two unknown words for TensorFlow's parser.
    options = flags.parse_flags(["--model_base_path=/m", "--bogus", "stray", "--port", "9000",
                                 "--rest_api_port=1", "--port=1"])
    assert options.unknown_arguments == ("--bogus", "stray", "--port", "9000")
    assert (options.port, options.rest_api_port) == (1, 1)


def test_upstream_flags_with_the_honoured_value_are_accepted():
    options = flags.parse_flags([
        "--model_base_path=/m", "--rest_api_timeout_in_ms=5000", "--rest_api_num_threads=3",
        "--saved_model_tags=serve", "--num_load_threads=0", "--flush_filesystem_caches=false",
        "--enable_profiler=false", "--model_config_file_poll_wait_seconds=30",
        "--grpc_socket_path=/tmp/koa.sock", "--enable_model_warmup=false",
        "--num_request_iterations_for_warmup=3", "--tensorflow_intra_op_parallelism=2"])
    assert (options.rest_api_timeout_in_ms, options.rest_api_num_threads) == (5000, 3)
    assert options.model_config_file_poll_wait_seconds == 30
    assert options.grpc_socket_path == "/tmp/koa.sock"
    assert options.enable_model_warmup is False and options.num_request_iterations_for_warmup == 3
    assert options.tensorflow_intra_op_parallelism == 2
    assert options.unknown_arguments == ()


def test_upstream_defaults_for_the_new_flags():
    options = flags.parse_flags(["--model_base_path=/m"])
    assert options.rest_api_timeout_in_ms == 30000
    assert options.model_config_file_poll_wait_seconds == 0
    assert options.enable_model_warmup is True and options.num_request_iterations_for_warmup == 1
    assert options.bind_address == "0.0.0.0" and options.grpc_socket_path == ""
    assert options.rest_api_num_threads > 0
    # --version needs no model.
    assert flags.parse_flags(["--version"]).version is True
    # The gRPC port may be off when a UNIX socket serves instead.
    assert flags.parse_flags(["--model_base_path=/m", "--port=0", "--grpc_socket_path=s"]).port == 0


def test_version_flag_prints_versions_and_exits(capsys):
    from serving.__main__ import main

    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("TensorFlow ModelServer: ")
    assert "TensorFlow Library: 2." in out


def test_channel_arguments():
    assert flags.parse_channel_arguments("grpc.max_receive_message_length=10,grpc.lb_policy_name=x") == [
        ("grpc.max_receive_message_length", 10), ("grpc.lb_policy_name", "x")]
    with pytest.raises(flags.FlagError):
        flags.parse_channel_arguments("novalue")


def test_model_server_config(tmp_path):
    path = tmp_path / "models.config"
    path.write_text("""model_config_list {
      config { name: "a" base_path: "/a" model_platform: "tensorflow"
               model_version_policy { latest { num_versions: 2 } } }
      config { name: "b" base_path: "/b" model_platform: "tensorflow" model_version_policy { all {} } }
      config { name: "c" base_path: "/c" model_type: TENSORFLOW
               model_version_policy { specific { versions: 3 versions: 5 } }
               version_labels { key: "stable" value: 3 } }
    }""")
    a, b, c = config.read_model_server_config(str(path))
    assert (a.name, a.policy.kind, a.policy.num_versions) == ("a", "latest", 2)
    assert b.policy.kind == "all"
    assert c.policy.versions == frozenset({3, 5}) and c.labels == {"stable": 3}


def test_empty_config_serves_nothing(tmp_path):
    # TensorFlow Serving accepts an empty config and serves no model.
    path = tmp_path / "models.config"
    for text in ("", "model_config_list {}"):
        path.write_text(text)
        assert config.read_model_server_config(str(path)) == []


@pytest.mark.parametrize("text, message", [
    # Each message is TensorFlow Serving's own (ServerCore::ReloadConfig).
    ("model_config_list { config { name: 'a' model_platform: 'tensorflow' } }",
     "Expected model a to have an absolute path or URI; got base_path\\(\\)=$"),
    ("model_config_list { config { name: 'a' base_path: 'models/a' model_platform: 'tensorflow' } }",
     "Expected model a to have an absolute path or URI; got base_path\\(\\)=models/a"),
    ("model_config_list { config { name: 'a' base_path: '/a' model_platform: 'tensorflow' } "
     "config { name: 'a' base_path: '/b' model_platform: 'tensorflow' } }",
     "Illegal to list model a multiple times in config list"),
    ("model_config_list { config { name: 'a' base_path: '/a' model_platform: 'pytorch' } }",
     "Model a requests unsupported platform pytorch"),
    ("model_config_list { config { name: 'a' base_path: '/a' } }",
     "Illegal setting neither ModelServerConfig::model_type \\(deprecated\\) nor "
     "ModelServerConfig::model_platform."),
    ("model_config_list { config { name: 'a' base_path: '/a' model_type: TENSORFLOW "
     "model_platform: 'tensorflow' } }", "Illegal setting both ModelServerConfig::model_type"),
    ("custom_model_config { }", "ModelServer does not yet support custom model config."),
    ("model_config_list { config { name: 'a' base_path: 'gs://bucket/a' model_platform: 'tensorflow' } }",
     "reads local paths only"),
    ("not a proto", "Invalid protobuf file"),
])
def test_invalid_model_server_config(tmp_path, text, message):
    path = tmp_path / "models.config"
    path.write_text(text)
    with pytest.raises(config.ServerConfigError, match=message):
        config.read_model_server_config(str(path))


def test_single_model_flags_are_validated_like_a_config():
    assert config.single_model_config("koa", "/models/koa")[0].base_path == "/models/koa"
    with pytest.raises(config.ServerConfigError, match="Expected model koa to have an absolute path"):
        config.single_model_config("koa", "models/koa")


def test_batching_and_monitoring_files(tmp_path):
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 32 }\nbatch_timeout_micros { value: 5000 }\n"
                        "num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 7 }\n"
                        "allowed_batch_sizes: 8\nallowed_batch_sizes: 32\n")
    assert config.read_batching_parameters(str(batching)) == config.BatchingConfig(32, 5000, 7, 2, (8, 32))
    assert config.read_batching_parameters("") == config.BatchingConfig()
    batching.write_text("max_batch_size { value: 0 }")
    with pytest.raises(config.ServerConfigError, match="max_batch_size must be positive"):
        config.read_batching_parameters(str(batching))
    batching.write_text("no_such_field { value: 1 }")
    with pytest.raises(config.ServerConfigError, match="Invalid protobuf file"):
        config.read_batching_parameters(str(batching))

    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }")
    assert config.read_monitoring_config(str(monitoring)) == config.MonitoringConfig(
        True, "/monitoring/prometheus/metrics")


def test_session_config_file_with_thread_flags_over_it(tmp_path):
    assert config.read_session_config("") is None  # TensorFlow's defaults
    session = tmp_path / "session.config"
    session.write_text("intra_op_parallelism_threads: 3\ninter_op_parallelism_threads: 4\n"
                       "experimental { disable_thread_spinning: true }\n")
    from_file = config.read_session_config(str(session))
    assert (from_file.intra_op_parallelism_threads, from_file.inter_op_parallelism_threads,
            from_file.experimental.disable_thread_spinning) == (3, 4, True)
    assert from_file.allow_soft_placement  # as a Session without a config has it
    overridden = config.read_session_config(str(session), intra_op_threads=1)
    assert (overridden.intra_op_parallelism_threads, overridden.inter_op_parallelism_threads,
            overridden.experimental.disable_thread_spinning) == (1, 4, True)
    flags_only = config.read_session_config("", 2, 2)
    assert (flags_only.intra_op_parallelism_threads, flags_only.inter_op_parallelism_threads) == (2, 2)

    session.write_text("intra_op_parallelism_threads: 3\nintra_op_parallelism_threads: 4\n")
    with pytest.raises(config.ServerConfigError, match="intra_op_parallelism_threads"):
        config.read_session_config(str(session))  # a field given twice, as upstream rejects it
    session.write_text("intra_op_threads: 3")
    with pytest.raises(config.ServerConfigError, match=f"Invalid protobuf file: '{session}'"):
        config.read_session_config(str(session))
    with pytest.raises(config.ServerConfigError, match="cannot read TensorFlow session config file"):
        config.read_session_config(str(tmp_path / "absent.config"))


def test_a_servable_runs_in_a_session_with_the_given_config(linear_models):
    from serving.servable import Servable

    session_config = config.read_session_config("", intra_op_threads=1, inter_op_threads=1)
    servable = Servable("linear", 1, linear_models[1], session_config=session_config)
    # The Session is created with the config (its thread pools, though, are the process's:
    # the first Session or device of a process builds them).
    assert servable._session._config == session_config  # pylint: disable=protected-access
    answer = servable.run("serving_default", {"x": np.array([2.0], np.float32)}, ("y",))
    np.testing.assert_allclose(answer["y"], [3.0])  # version 1: y = 0.5 x + 2
