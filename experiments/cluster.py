"""The Ray executor: a sweep's pending units as Ray tasks, on a local Ray or a cluster.

``advsweep sweep CONFIG --executor ray [--address HOST:PORT]`` (or ``[run] executor = "ray"``). The driver
(this process) loads and trains the models as the local executor does, then puts the sweep's examples and each
model's ``.keras`` file into Ray's object store. Every pending unit becomes a task of ``cpus_per_task`` CPUs (and
``gpus_per_task`` GPUs) that loads the model from those bytes (once per worker process, by the same function as the
driver), computes the unit (:func:`~advsweep.experiments.units.compute_unit`) and returns its records; the driver
writes them into the run folder and the ledger (``done/``) exactly as the local executor does. Workers need no
shared filesystem and write nothing.

A worker that dies mid-unit has its task retried by Ray (``max_retries``). A driver killed outright loses only
the units in flight: the ledger has every finished one, and rerunning the command, on Ray or locally, resumes.
A worker refuses to run a unit if its copy of the harness' sources differs from the driver's (the run id
vouches for the code that made the records).

A minimal-ε unit starts from the grid bounds of its model's attack records, so it is sent once every attack unit
of that model is written. The rest go out longest first (by their estimated cost), which shortens the run's tail.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from advsweep.experiments.config import RunSpec, SweepError

if TYPE_CHECKING:
    from advsweep.experiments.units import Finish, SweepInputs, Unit, UnitOutput

logger = logging.getLogger(__name__)

MODELS_PER_WORKER = 3  # loaded models a worker process keeps (a VGG16 takes seconds to load, 60 MB to hold)
CONNECT_TIMEOUT = 5.0  # seconds to reach the head node's port before the address is called wrong
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # length 0, type SETTINGS, no flags, stream 0
TOKEN_SOURCES = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def use_token_if_available() -> bool:
    """Send the cluster's token when this machine has one and ``RAY_AUTH_MODE`` is not set.

    From Ray 2.59 a local ``ray.init()`` writes ``~/.ray/auth_token`` and protects its cluster with it, and a later
    ``ray start --head`` on a machine with that file requires it too; but a driver that connects by address sends the
    token only when ``RAY_AUTH_MODE=token``, so without this a sweep on such a cluster waited and failed. A cluster
    without authentication ignores the token (both checked with Ray 2.60)."""
    if "RAY_AUTH_MODE" in os.environ:
        return os.environ["RAY_AUTH_MODE"].lower() == "token"
    if any(os.environ.get(name) for name in TOKEN_SOURCES) or (Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"
        try:  # Ray reads the mode once per process; its own switch re-reads it (as `address="auto"` does)
            from ray._private.authentication.authentication_token_setup import _enable_token_auth

            _enable_token_auth()
        except ImportError:  # a Ray without token authentication: the variable is all there is
            pass
        return True
    return False


def check_address(address: str) -> None:
    """Refuse an address that is not ``auto`` or ``HOST:PORT`` with a reachable port, in one line."""
    if address == "auto":
        return
    if address.startswith("ray://"):
        raise SweepError(f"--address {address}: the Ray Client (ray://) is not supported, the driver must be on the "
                         f"cluster; run advsweep on a node of the cluster with --address HOST:PORT (the head's GCS "
                         f"port, 6379 by default) or --address auto")
    host, _, port_text = address.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise SweepError(f"--address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379, what `ray start --head` "
                         f"printed) or auto")
    try:
        probe = socket.create_connection((host.strip("[]"), int(port_text)), timeout=CONNECT_TIMEOUT)
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise SweepError(f"cannot reach a Ray cluster at {address} ({reason}); start one there with "
                         f"`ray start --head --port {port_text}`, or leave out --address to start Ray on this "
                         f"machine") from None
    # Ray's GCS is a gRPC (HTTP/2) server, whose first frame is SETTINGS. Ray itself waits minutes on a port that
    # accepts but is not a GCS (the dashboard's, say), so that is refused here in seconds.
    answer = b""
    with probe:
        try:
            probe.sendall(HTTP2_PREFACE + EMPTY_SETTINGS)
            while len(answer) < 9:
                chunk = probe.recv(9 - len(answer))
                if not chunk:
                    break
                answer += chunk
        except OSError:  # a silent or closing port
            pass
    if len(answer) < 9 or answer[3] != 0x04:
        raise SweepError(f"{address} answers but is not a Ray cluster's GCS port (it does not speak gRPC); give the "
                         f"address `ray start --head` printed (port 6379 unless --port was given)")


def connect(run: RunSpec) -> Cluster:
    """Connect to the cluster at ``run.address`` (``None``: start a Ray on this machine for the sweep).

    Raises:
        SweepError: Ray is not installed, or the cluster cannot be reached (one line, nothing written yet).
    """
    try:
        import ray
    except ImportError:
        raise SweepError("the Ray executor needs Ray: install advsweep's ray extra (pip install -e '.[ray]' in the "
                         "checkout), or run without --executor ray") from None
    token = False
    if run.address is not None:
        check_address(run.address)
        token = use_token_if_available()
    if ray.is_initialized():  # e.g. a notebook that connected itself; this sweep's own connection replaces it
        ray.shutdown()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        # "local": always a new Ray for the sweep, never one a stale /tmp/ray/ray_current_cluster points at
        context = ray.init(address=run.address or "local", include_dashboard=False, logging_level=logging.WARNING,
                           log_to_driver=logger.isEnabledFor(logging.DEBUG))
    except (ConnectionError, RuntimeError, ValueError) as error:
        hint = ("; if the cluster uses token authentication, give this machine its token: `ray get-auth-token` on "
                "the head node, then RAY_AUTH_TOKEN=<token> here"
                if run.address is not None and not token else "")
        raise SweepError(f"cannot connect to the Ray cluster at {run.address or 'a new local Ray'}: "
                         f"{str(error).splitlines()[0] if str(error) else type(error).__name__}{hint}") from None
    gcs = getattr(context, "address_info", {}).get("gcs_address") or run.address
    return Cluster(spec=run, started_here=run.address is None, address=str(gcs))


@dataclasses.dataclass
class Cluster:
    spec: RunSpec
    started_here: bool
    address: str

    def describe(self) -> dict[str, Any]:
        """For the manifest: Ray's version, the cluster's nodes and resources, and each task's resources."""
        import ray

        nodes = [{"node_id": n["NodeID"], "host": n.get("NodeManagerHostname"), "address": n.get("NodeManagerAddress"),
                  "resources": n.get("Resources", {})} for n in ray.nodes() if n.get("Alive")]
        return {"ray": ray.__version__, "address": self.address, "started_for_the_sweep": self.started_here,
                "nodes": nodes, "resources": ray.cluster_resources(), "cpus_per_task": self.spec.cpus_per_task,
                "gpus_per_task": self.spec.gpus_per_task, "max_retries": self.spec.max_retries}

    def close(self) -> None:
        import ray

        ray.shutdown()  # stops a Ray started for the sweep; only disconnects from a cluster

    def execute(self, inputs: SweepInputs, units: list[Unit], todo: list[Unit], finish: Finish,
            progress: Callable[[str], None] | None = None) -> None:
        """Run ``todo`` as Ray tasks, handing each finished unit to ``finish`` (which writes it) as it arrives."""
        import ray

        from advsweep.experiments.units import escalation_triggers, grid_upper_bounds
        from advsweep.models.user import pack_model

        config = inputs.config
        task = ray.remote(_unit_task).options(num_cpus=self.spec.cpus_per_task, num_gpus=self.spec.gpus_per_task,
                                              max_retries=self.spec.max_retries, retry_exceptions=False)
        shared = {name: ray.put(value) for name, value in
                  (("config", config), ("x", inputs.x), ("labels", inputs.labels), ("examples", inputs.examples))}
        needed = {u.model for u in todo}
        model_refs = {}
        for name in needed | {u.surrogate for u in todo if u.surrogate is not None}:
            loaded = inputs.models[name]
            packed_name, packed = pack_model(loaded.file)
            model_refs[name] = {"bytes": [ray.put(packed)], "name": packed_name, "sha256": loaded.sha256,
                                "spec": loaded.spec, "written_by_train": loaded.written_by_train,
                                "code": [(f.name, f.read_bytes()) for f in loaded.code]}
        environment = {"cpus": self.spec.cpus_per_task, "source_sha256": inputs.code["source_sha256"],
                       "device": inputs.execution["device"], "plans": inputs.execution["plans"],
                       "randomized": inputs.randomized}

        # minimal-ε units wait for their model's attack units (they start from those records' bounds)
        waiting_attacks = {name: sum(1 for u in todo if u.model == name and u.kind == "attack") for name in needed}
        held = [u for u in todo if u.kind == "minimal"]
        # an escalation unit waits for every other unit of its model (it acts on what their checks found)
        waiting_all = {name: sum(1 for u in todo if u.model == name and u.kind != "escalation") for name in needed}
        escalations = [u for u in todo if u.kind == "escalation"]
        inflight: dict[Any, Unit] = {}

        def submit(unit: Unit, bounds: Any = None, triggers: Any = None) -> None:
            ref = task.remote(unit, model_refs[unit.model], shared["config"], shared["x"], shared["labels"],
                              shared["examples"], bounds, environment,
                              None if unit.surrogate is None else model_refs[unit.surrogate], triggers)
            inflight[ref] = unit

        def release_minimal() -> None:
            for unit in [u for u in held if waiting_attacks[u.model] == 0]:
                held.remove(unit)
                submit(unit, grid_upper_bounds(inputs.run_dir, unit.model, config.minimal.norm,
                                               inputs.examples[unit.start:unit.stop]))
            for unit in [u for u in escalations if waiting_all[u.model] == 0]:
                escalations.remove(unit)
                submit(unit, triggers=escalation_triggers(inputs.run_dir, unit.model,
                                                          randomized=inputs.randomized.get(unit.model, False)))

        for unit in sorted((u for u in todo if u.kind not in ("minimal", "escalation")), key=lambda u: -u.cost):
            submit(unit)
        release_minimal()
        logger.info("%d units sent to Ray (%s)", len(inflight), ", ".join(
            f"{int(v)} {k}" for k, v in sorted(ray.cluster_resources().items()) if k in ("CPU", "GPU")))
        try:
            while inflight:
                ready, _ = ray.wait(list(inflight), num_returns=1)
                for ref in ready:
                    unit = inflight.pop(ref)
                    output, seconds, worker = ray.get(ref)
                    finish(unit, output, seconds, worker)
                    if unit.kind == "attack":
                        waiting_attacks[unit.model] -= 1
                    if unit.kind != "escalation":
                        waiting_all[unit.model] -= 1
                    if progress is not None:
                        progress(f"{len(inflight)} in flight; {unit.key}")
                release_minimal()
        except BaseException:  # an interrupt or a failed unit: what finished is written, the rest is cancelled
            for ref in inflight:
                ray.cancel(ref, force=True)
            raise


# --------------------------------------------------------------------------------------------
# the worker side

_WORKER: dict[str, Any] = {"ready": False, "models": {}}


def _prepare_worker(environment: dict[str, Any]) -> None:
    """Once per worker process, before TensorFlow runs anything: thread pools of the task's CPUs, GPU memory growth
    (several tasks can share a card), the deterministic kernels the driver uses too, and the same sources."""
    if _WORKER["ready"]:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from advsweep.attacks.engine.core import device_kind
    from advsweep.experiments.units import deterministic_kernels, source_digest

    if source_digest() != environment["source_sha256"]:
        raise RuntimeError(f"the worker on {socket.gethostname()} runs other advsweep sources than the driver (their "
                           f"sha256 differ): install the same advsweep on every node of the cluster")
    here = device_kind()
    if here != environment["device"]:  # another kind of device makes other records than the run's
        raise RuntimeError(f"the worker on {socket.gethostname()} runs TensorFlow on {here}, the run's records "
                           f"are made on {environment['device']}: give the tasks the devices the run was started with "
                           f"([run] gpus_per_task), or start a new run")
    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(environment["cpus"]))
        tf.config.threading.set_inter_op_parallelism_threads(int(environment["cpus"]))
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:  # TensorFlow already initialised in this process: its pools stay as they are
        logger.warning("TensorFlow was initialised before the task could size its thread pools")
    deterministic_kernels()
    _WORKER["ready"] = True


def _worker_model(model: dict[str, Any], data: Any) -> Any:
    """The model of a unit, loaded once per worker process from the bytes the driver put in the object store."""
    import hashlib

    import ray

    from advsweep.experiments.units import classifier_from_file
    from advsweep.models.user import content_sha256, unpack_model

    cache: dict[str, Any] = _WORKER["models"]  # insertion order is use order: the oldest goes first
    if model["sha256"] in cache:
        cache[model["sha256"]] = cache.pop(model["sha256"])
    else:
        content = ray.get(model["bytes"][0])
        with tempfile.TemporaryDirectory() as folder:
            path = unpack_model(model.get("name", "model.keras"), content, Path(folder))
            if content_sha256(path) != model["sha256"]:
                raise RuntimeError("the model file from the object store does not match its sha256")
            code = []  # the model's own classes' code, as the driver read it (the worker's disk may not have it)
            for index, (name, source) in enumerate(model.get("code", [])):
                (Path(folder) / f"code{index}").mkdir()
                code.append(Path(folder) / f"code{index}" / name)
                code[-1].write_bytes(source)
            while len(cache) >= MODELS_PER_WORKER:
                cache.pop(next(iter(cache)))
            cache[model["sha256"]] = classifier_from_file(path, model["spec"], data,
                                                          written_by_train=model["written_by_train"], code_files=code)
    return cache[model["sha256"]]


def _unit_task(unit: Unit, model: dict[str, Any], config: Any, x: Any, labels: Any, examples: Any, bounds: Any,
               environment: dict[str, Any], surrogate: dict[str, Any] | None = None,
               triggers: dict[str, Any] | None = None) -> tuple[UnitOutput, float, dict[str, Any]]:
    """A Ray task: compute one unit from the object store's inputs (a transfer attack's: with its surrogate model);
    the driver writes what it returns."""
    _prepare_worker(environment)
    from advsweep.attacks.engine.plan import use_plan
    from advsweep.experiments.units import compute_unit

    started = time.perf_counter()
    classifier = _worker_model(model, config.data)
    use_plan(classifier, environment["plans"][unit.model])  # the model calls the run's id names, not this node's
    crafter = None
    if surrogate is not None:
        crafter = _worker_model(surrogate, config.data)
        use_plan(crafter, environment["plans"][unit.surrogate])
    output = compute_unit(config, unit, classifier, x, labels, examples, bounds, crafter,
                          randomized=environment.get("randomized", {}).get(unit.model, False), triggers=triggers)
    seconds = time.perf_counter() - started
    import ray

    worker = {"executor": "ray", "host": socket.gethostname(), "pid": os.getpid(),
              "node_id": ray.get_runtime_context().get_node_id()}
    return output, seconds, worker
