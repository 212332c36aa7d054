"""``tf.distribute`` strategies for ``cfconv train``, and what each worker writes.

Three choices:

- ``none``: TensorFlow's default strategy (one device);
- ``mirrored``: ``MirroredStrategy`` over this host's devices (GPUs, or the CPU split
  into ``cpu_replicas`` logical devices, which is how the tests and a CPU-only user
  exercise it);
- ``multiworker``: ``MultiWorkerMirroredStrategy``; every worker runs the same
  ``cfconv train`` command with its own ``TF_CONFIG`` (see docs/training.md).

CF-Conv layers stay consistent under all of them because each training step draws its
positions from a stateless seed held in a mirrored weight and writes its spectral state
with ``only_first_replica`` aggregation (see :class:`cfconv_tf.layers.CFConv2D`).

Keras' ``BackupAndRestore`` and ``ModelCheckpoint`` are not multi-worker aware: every
worker writes its files. The chief writes the run directory; worker ``i`` writes its
own ``worker-<i>/`` inside it, so workers sharing a file system never overwrite each
other's backups.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import tensorflow as tf

STRATEGIES = ("none", "mirrored", "multiworker")
DEFAULT_COLLECTIVE_TIMEOUT = 600.0


class PeerFailure(RuntimeError):
    """Another worker of a multi-worker run died or stopped answering."""


class KerasMultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """``MultiWorkerMirroredStrategy`` whose ``reduce`` takes what Keras 3 gives it.

    Keras 3's ``fit`` fails under the multi-worker strategy (keras-team/keras#20585)
    in two ``strategy.reduce`` calls: it reduces a whole ``(x, y)`` batch structure at
    once before building the model ("Attempt to convert a value (PerReplica...)"), and
    it reduces each step's scalar metrics with ``axis=0`` ("Invalid reduction dimension
    0 for input with 0 dimensions"). This reduces each value of a structure separately,
    and scalars across replicas only, which is what both calls mean.
    """

    def reduce(self, reduce_op, value, axis):
        parent = super()

        def reduce_part(part):
            scalar = all(v.shape.rank == 0 for v in self.experimental_local_results(part))
            return parent.reduce(reduce_op, part, None if scalar else axis)

        return tf.nest.map_structure(reduce_part, value)


def split_cpu(replicas: int) -> None:
    """Expose the host CPU as ``replicas`` logical devices for ``MirroredStrategy``.

    Must run before TensorFlow initializes its devices (before the first op).
    """
    if replicas < 1:
        raise ValueError(f"cpu replicas must be a positive count, got {replicas}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * replicas
        )
    except RuntimeError as error:
        raise ValueError(
            f"cannot split the CPU into {replicas} devices once TensorFlow has started: {error}"
        ) from error


def _check_tf_config() -> None:
    """A multi-worker run needs a ``TF_CONFIG`` naming the cluster and this task."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ValueError(
            "--strategy multiworker reads the cluster from the TF_CONFIG environment "
            'variable, which is not set; e.g. TF_CONFIG=\'{"cluster": {"worker": '
            '["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\''
        )
    try:
        config = json.loads(text)
        workers = config["cluster"]["worker"]
        task = config["task"]
        task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"TF_CONFIG must be JSON with cluster.worker (a list of host:port) and task "
            f"(type, index); got {text!r} ({error})"
        ) from error
    if not isinstance(workers, list) or not workers:
        raise ValueError(f"TF_CONFIG cluster.worker must be a non-empty list, got {workers!r}")


def make_strategy(
    name: str,
    cpu_replicas: int | None = None,
    collective_timeout: float = DEFAULT_COLLECTIVE_TIMEOUT,
) -> tf.distribute.Strategy:
    """The strategy called ``name`` (one of :data:`STRATEGIES`).

    Args:
        cpu_replicas: for ``mirrored`` on a host without GPUs, split the CPU into this
            many logical devices (one replica each) first.
        collective_timeout: for ``multiworker``, seconds a collective (gradient
            all-reduce, state broadcast) may wait for the other workers before the run
            fails instead of hanging.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {STRATEGIES}")
    if cpu_replicas is not None and name != "mirrored":
        raise ValueError("cpu replicas only apply to --strategy mirrored")
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if cpu_replicas is not None:
            split_cpu(cpu_replicas)
            devices = [device.name for device in tf.config.list_logical_devices("CPU")]
            return tf.distribute.MirroredStrategy(devices)
        return tf.distribute.MirroredStrategy()
    if collective_timeout <= 0:
        raise ValueError(f"collective timeout must be positive, got {collective_timeout}")
    _check_tf_config()
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_timeout)
    return KerasMultiWorkerStrategy(communication_options=options)


def worker_index(strategy: tf.distribute.Strategy) -> int:
    """0 for the chief (or a single-worker run), else this worker's task index."""
    if strategy.extended.should_checkpoint:
        return 0
    return int(strategy.cluster_resolver.task_id)


def worker_dir(run_dir: Path, strategy: tf.distribute.Strategy) -> Path:
    """Where this worker writes: the run directory for the chief, else ``worker-<i>/``."""
    index = worker_index(strategy)
    return run_dir if index == 0 else run_dir / f"worker-{index}"


def describe(strategy: tf.distribute.Strategy) -> str:
    """One line for the log: which strategy, how many replicas."""
    replicas = f"{strategy.num_replicas_in_sync} replica(s)"
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        workers = len(strategy.cluster_resolver.cluster_spec().as_dict().get("worker", [])) or 1
        return f"MultiWorkerMirroredStrategy with {replicas} on {workers} worker(s)"
    return f"{type(strategy).__name__} with {replicas}"


def _failed_peers(message: str) -> str:
    """The tasks a collective's error message names, e.g. ``"worker 1"``."""
    tasks = sorted(set(re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", message)))
    return ", ".join(f"{job} {index}" for job, index in tasks) or "another worker"


@contextlib.contextmanager
def peer_failures_reported(strategy: tf.distribute.Strategy) -> Iterator[None]:
    """Turn a multi-worker collective's failure into a :class:`PeerFailure` that says why.

    When a worker dies, TensorFlow's health check or the collective timeout aborts the
    pending collectives of the others with ``UnavailableError`` /
    ``DeadlineExceededError`` (or ``CancelledError``); the message of those is about
    ops, not about the cluster.
    """
    try:
        yield
    except (
        tf.errors.UnavailableError,
        tf.errors.DeadlineExceededError,
        tf.errors.CancelledError,
    ) as error:
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise
        raise PeerFailure(
            f"the {describe(strategy)} run lost contact with {_failed_peers(str(error))} "
            f"({type(error).__name__}): a worker died or stopped answering. Restart every "
            f"worker with the same command to resume from the last backup."
        ) from error
