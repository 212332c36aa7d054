"""tf.distribute: replicas keep one spectral state; runs resume across strategies.

MirroredStrategy runs in this process on the two logical CPUs that conftest sets up;
MultiWorkerMirroredStrategy runs as two real ``cfconv train`` worker processes on
127.0.0.1, every wait bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import Snapshots, StopAfter, write_config_yaml

from cfconv_tf.bench.processes import free_ports
from cfconv_tf.cli import main
from cfconv_tf.distribution import make_strategy
from cfconv_tf.layers import CFConv2D
from cfconv_tf.training import RunSettings, train

WORKER_START_TIMEOUT = 240  # s: two TensorFlow start-ups and a first traced step
WORKER_EXIT_TIMEOUT = 120  # s: how long a surviving worker may take to give up


class ReplicaValues(keras.callbacks.Callback):
    """Every weight's value on every replica (after each step and at the end), and losses."""

    def __init__(self) -> None:
        super().__init__()
        self.replicas: dict[str, list[np.ndarray]] = {}
        self.losses: list[float] = []
        self.steps_with_divergent_state = 0

    def _values(self) -> dict[str, list[np.ndarray]]:
        strategy = self.model.distribute_strategy
        return {
            weight.path: [np.array(v) for v in strategy.experimental_local_results(weight.value)]
            for weight in self.model.weights
        }

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))
        states = [v for name, v in self._values().items() if "state" in name]
        if any(not np.array_equal(copies[0], copy) for copies in states for copy in copies):
            self.steps_with_divergent_state += 1

    def on_train_end(self, logs=None):
        self.replicas = self._values()


def mirrored() -> tf.distribute.Strategy:
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def run_settings(config, steps: int = 3, epochs: int = 1) -> RunSettings:
    return RunSettings(
        config=config.replace(batch_size=16, epochs=epochs),
        variant="cf",
        train_limit=64,
        steps_per_epoch=steps,
        seed=7,
    )


def test_mirrored_replicas_share_one_state_and_match_a_single_device_run(tiny_config, tmp_path):
    settings = run_settings(tiny_config, steps=4)
    single, distributed = ReplicaValues(), ReplicaValues()
    train(settings, tmp_path / "single", extra_callbacks=[single], verbose=0)
    train(
        settings,
        tmp_path / "mirrored",
        extra_callbacks=[distributed],
        verbose=0,
        strategy=mirrored(),
    )
    states = [name for name in distributed.replicas if "state_" in name]
    assert len(states) == 2 * tiny_config.conv_layers
    assert distributed.steps_with_divergent_state == 0  # checked after every step
    for name, values in distributed.replicas.items():
        assert len(values) == 2, name
        np.testing.assert_array_equal(values[0], values[1], err_msg=name)
    # Global batch 16 as 2 x 8 gives the single-device run's losses and weights.
    np.testing.assert_allclose(distributed.losses, single.losses, rtol=1e-5)
    for name, values in single.replicas.items():
        np.testing.assert_allclose(
            distributed.replicas[name][0], values[0], rtol=1e-4, atol=1e-6, err_msg=name
        )
    counters = [v[0] for name, v in distributed.replicas.items() if "sampler_state" in name]
    assert [int(counter[1]) for counter in counters] == [4] * tiny_config.conv_layers
    first_layer = next(name for name in states if name.endswith("state_real"))
    initial = CFConv2D(tiny_config.filters, seed=settings.seed)
    initial.build((None, 28, 28, 1))
    changed = distributed.replicas[first_layer][0] != initial.state_real.numpy()
    assert 0 < changed.sum() <= 4 * int(0.05 * changed.size + 1)


@pytest.mark.parametrize("first,second", [("mirrored", "none"), ("none", "mirrored")])
def test_a_backup_written_under_one_strategy_resumes_under_the_other(
    tiny_config, tmp_path, first, second
):
    strategies = {"mirrored": mirrored, "none": lambda: None}
    settings = run_settings(tiny_config, steps=3, epochs=2)
    killed = Snapshots()
    with pytest.raises(KeyboardInterrupt):
        train(
            settings,
            tmp_path,
            extra_callbacks=[killed, StopAfter(4)],
            verbose=0,
            strategy=strategies[first](),
        )
    backup = json.loads((tmp_path / "backup" / "training_metadata.json").read_text())
    assert backup["epoch"] == 1  # backed up after epoch 0 (resume at 1), killed in epoch 1

    resumed, replicas = Snapshots(), ReplicaValues()
    train(
        settings,
        tmp_path,
        extra_callbacks=[resumed, replicas],
        verbose=0,
        strategy=strategies[second](),
    )
    assert resumed.epochs == [1]
    for backed_up, restored in zip(killed.after_step[(0, 2)], resumed.at_start, strict=True):
        np.testing.assert_array_equal(backed_up, restored)
    counters = [v[0] for name, v in replicas.replicas.items() if "sampler_state" in name]
    assert [int(counter[1]) for counter in counters] == [6] * tiny_config.conv_layers


def start_workers(tmp_path: Path, config, extra_args: list[str]) -> list[subprocess.Popen]:
    """Two ``cfconv train --strategy multiworker`` processes, logs in tmp_path."""
    config_file = write_config_yaml(config, tmp_path / "tiny.yaml")
    cluster = [f"127.0.0.1:{port}" for port in free_ports(2)]
    workers = []
    for index in range(2):
        tf_config = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "cfconv_tf.cli", "train", "--config", str(config_file)]
        argv += ["--strategy", "multiworker", "--out", str(tmp_path / "run"), *extra_args]
        log = open(tmp_path / f"worker{index}.log", "w")  # noqa: SIM115 (closed with the process)
        workers.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
    return workers


def stop(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
        worker.wait(timeout=30)


def test_two_worker_processes_end_with_identical_state_and_weights(tiny_config, tmp_path):
    args = ["--samples", "0.05", "--epochs", "2", "--steps-per-epoch", "3"]
    args += ["--train-limit", "128", "--batch-size", "16", "--collective-timeout", "120"]
    workers = start_workers(tmp_path, tiny_config, args)
    try:
        codes = [worker.wait(timeout=WORKER_START_TIMEOUT + 60) for worker in workers]
    finally:
        stop(workers)
    logs = [(tmp_path / f"worker{i}.log").read_text()[-3000:] for i in range(2)]
    assert codes == [0, 0], logs
    assert "MultiWorkerMirroredStrategy with 2 replica(s) on 2 worker(s)" in logs[0]
    chief = keras.saving.load_model(tmp_path / "run" / "model.keras")
    other = keras.saving.load_model(tmp_path / "run" / "worker-1" / "model.keras")
    for mine, theirs in zip(chief.weights, other.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.path)
    for layer in chief.layers:
        if isinstance(layer, CFConv2D):
            assert int(layer.sampler_state.numpy()[1]) == 6  # 2 epochs x 3 steps
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 3  # header and two epochs, written by the chief only


def test_killing_a_worker_fails_the_other_with_a_clear_message(tiny_config, tmp_path):
    args = ["--samples", "0.05", "--epochs", "1", "--steps-per-epoch", "100000"]
    args += ["--train-limit", "128", "--batch-size", "16", "--collective-timeout", "60"]
    workers = start_workers(tmp_path, tiny_config, args)
    try:
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while "/100000" not in (tmp_path / "worker1.log").read_text():
            assert workers[1].poll() is None, (tmp_path / "worker1.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "workers never started training"
            time.sleep(0.5)
        workers[1].kill()
        code = workers[0].wait(timeout=WORKER_EXIT_TIMEOUT)
    finally:
        stop(workers)
    log = (tmp_path / "worker0.log").read_text()
    assert code == 1, log[-3000:]
    # The peer is named when the error says which task failed (a reset connection);
    # a collective that timed out only knows that someone is missing.
    assert re.search(r"lost contact with (worker 1|another worker)", log), log[-3000:]
    assert "Restart every worker with the same command" in log
    assert "Traceback" not in log


@pytest.mark.parametrize(
    "tf_config,message",
    [
        (None, "TF_CONFIG environment variable, which is not set"),
        ("{not json", "TF_CONFIG must be JSON"),
        ('{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}', "non-empty"),
    ],
)
def test_multiworker_needs_a_valid_tf_config(monkeypatch, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=message):
        make_strategy("multiworker")


def test_bad_strategy_requests_are_rejected():
    with pytest.raises(ValueError, match="unknown strategy 'ring'"):
        make_strategy("ring")
    with pytest.raises(ValueError, match="only apply to --strategy mirrored"):
        make_strategy("none", cpu_replicas=2)
    with pytest.raises(ValueError, match="once TensorFlow has started"):
        make_strategy("mirrored", cpu_replicas=3)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--strategy", "multiworker"], "TF_CONFIG environment variable, which is not set"),
        (["--cpu-replicas", "2"], "only apply to --strategy mirrored"),
        (["--strategy", "multiworker", "--collective-timeout", "0"], "must be positive"),
    ],
)
def test_cli_train_reports_bad_strategy_requests(monkeypatch, tmp_path, capsys, extra, message):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert main(["train", "--out", str(tmp_path / "run"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
