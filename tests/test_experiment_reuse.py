"""cfconv experiment reads a finished run back only if it is the run asked for."""

from __future__ import annotations

from conftest import write_config_yaml

from cfconv_tf.cli import main


def test_a_finished_run_of_an_earlier_configuration_is_refused_not_reported(
    tiny_config, tmp_path, capsys
):
    """A changed configuration file under the same --out once had the old run's
    numbers reported as the new configuration's (the first ResNet-8's 14-dash
    Pathfinder run would have stood for the fixed one's)."""
    config_file = write_config_yaml(tiny_config, tmp_path / "tiny.yaml")
    out = tmp_path / "experiment"
    argv = ["experiment", "--config", str(config_file), "--seeds", "0"]
    argv += ["--steps-per-epoch", "1", "--train-limit", "32", "--batch-size", "16"]
    argv += ["--out", str(out)]
    assert main(argv) == 0
    write_config_yaml(tiny_config.replace(learning_rate=0.01), config_file)
    capsys.readouterr()
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "finished run of other settings" in error and "config.learning_rate" in error
