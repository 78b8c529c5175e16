"""Flag parsing (tensorflow_model_server's rules) and the text-proto config files."""

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
    (["--model_base_path=/m", "--bogus"], "unknown argument: --bogus"),
    (["--model_base_path=/m", "stray"], "unknown argument: stray"),
    (["--model_base_path=/m", "--enable_batching=maybe"], "Couldn't interpret value maybe"),
    (["--model_base_path=/m", "--port=1", "--rest_api_port=1"], "cannot be same as --port"),
    (["--model_base_path=/m", "--batching_parameters_file=/b"], "requires --enable_batching"),
])
def test_invalid_command_lines(argv, message):
    with pytest.raises(flags.FlagError, match=message):
        flags.parse_flags(argv)


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
      config { name: "b" base_path: "/b" model_version_policy { all {} } }
      config { name: "c" base_path: "/c" model_version_policy { specific { versions: 3 versions: 5 } }
               version_labels { key: "stable" value: 3 } }
    }""")
    a, b, c = config.read_model_server_config(str(path))
    assert (a.name, a.policy.kind, a.policy.num_versions) == ("a", "latest", 2)
    assert b.policy.kind == "all"
    assert c.policy.versions == frozenset({3, 5}) and c.labels == {"stable": 3}


@pytest.mark.parametrize("text, message", [
    ("model_config_list { config { name: 'a' } }", "needs a name and a base_path"),
    ("model_config_list { config { name: 'a' base_path: '/a' } config { name: 'a' base_path: '/b' } }",
     "configured twice"),
    ("model_config_list { config { name: 'a' base_path: '/a' model_platform: 'pytorch' } }", "platform"),
    ("not a proto", "Invalid protobuf file"),
])
def test_invalid_model_server_config(tmp_path, text, message):
    path = tmp_path / "models.config"
    path.write_text(text)
    with pytest.raises(config.ServerConfigError, match=message):
        config.read_model_server_config(str(path))


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
