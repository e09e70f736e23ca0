"""The Ray executor, on a real local Ray cluster started by the test (`ray start --head`, two CPUs): the same
records as the in-process executor to the byte, nothing lost when a worker or the driver is killed, and a bad
address refused in one line before anything is written."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")  # in the test extra; the local executor needs no Ray

from advsweep.experiments.cli import main  # noqa: E402
from advsweep.experiments.config import ConfigError, RunSpec, load_config, parse_config  # noqa: E402
from advsweep.experiments.sweep import plan, run_identity, run_sweep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMPARED = ("summary.csv", "summary.md", "summary.tex", "robustness_curve.csv", "checks.json")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A one-node Ray cluster of two CPUs, as `ray start --head` makes one; its address (HOST:PORT)."""
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    log = tmp_path_factory.mktemp("ray") / "head.log"
    with log.open("w") as out:
        head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                                 f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                                 "--node-ip-address=127.0.0.1", "--disable-usage-stats"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert head.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
    else:
        pytest.fail(f"ray start did not open {address}: {log.read_text()[-3000:]}")
    yield address
    head.send_signal(signal.SIGTERM)  # --block: the head stops every process it started
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        head.kill()


def _on_ray(config, address: str):
    return dataclasses.replace(config, run=RunSpec(executor="ray", address=address))


def _files(run_dir: Path) -> dict[str, bytes]:
    """Every record, adversarial-example file and table of a run, by path."""
    paths = [*run_dir.glob("records/*/*.parquet"), *run_dir.glob("adversarials/*/*.npz"),
             *(run_dir / name for name in COMPARED)]
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in paths}


def _assert_same_run(run_dir: Path, reference: Path) -> None:
    ours, theirs = _files(run_dir), _files(reference)
    assert sorted(ours) == sorted(theirs)
    differing = [name for name in theirs if ours[name] != theirs[name]]
    assert not differing, f"differ from the in-process run: {differing}"


# --------------------------------------------------------------------------------------------
# the same records


@pytest.mark.slow  # 2.5 min with the cluster's start: end to end, run by CI's slow pass
def test_ray_gives_byte_identical_records_and_summary(finished_run, sweep_config, ray_cluster, tmp_path):
    """Half the units of the in-process run are deleted (ledger entry and files); Ray redoes them into the same
    run folder (the executor is not part of the run id), and every record and table is the same to the byte."""
    config = load_config(sweep_config)
    run_dir = tmp_path / "tiny" / finished_run.name
    shutil.copytree(finished_run, run_dir)
    units = plan(config)
    redone = {u.key for u in units[1::2]} | {u.key for u in units if u.kind == "minimal"}
    for unit in units:
        if unit.key in redone:
            for name in json.loads((run_dir / unit.done_path).read_text())["files"]:
                (run_dir / name).unlink()
            (run_dir / unit.done_path).unlink()
    kept = {u.key: (run_dir / u.done_path).read_text() for u in units if u.key not in redone}
    assert run_sweep(_on_ray(config, ray_cluster), tmp_path) == run_dir
    _assert_same_run(run_dir, finished_run)
    assert {key: (run_dir / u.done_path).read_text() for u in units if (key := u.key) in kept} == kept
    manifest = json.loads((run_dir / "manifest.json").read_text())
    executor = manifest["executor"]
    assert executor["name"] == "ray" and executor["ray"] == ray.__version__
    assert executor["address"].endswith(":" + ray_cluster.rsplit(":", 1)[1])  # the head's own name for itself
    assert not executor["started_for_the_sweep"]
    assert executor["resources"]["CPU"] == 2 and len(executor["nodes"]) == 1
    assert executor["nodes"][0]["resources"]["CPU"] == 2
    assert set(manifest["units"]) == {u.key for u in units}
    for key, unit in manifest["units"].items():
        assert unit["worker"]["executor"] == ("ray" if key in redone else "local"), key
        assert unit["seconds"] > 0
    assert {u["worker"]["pid"] for k, u in manifest["units"].items() if k in redone}.isdisjoint({os.getpid()})
    assert [s["executor"] for s in manifest["sessions"]][-1] == "ray"


@pytest.mark.slow
def test_ray_runs_a_transfer_attack_with_its_surrogate_byte_identically(model_folders, transfer_config_text,
                                                                        ray_cluster, tmp_path):
    """A transfer attack's unit needs two models (the surrogate finds the adversarials, the model classifies them):
    on Ray each task gets both, and the records are the in-process run's to the byte."""
    path = tmp_path / "transfer.toml"
    path.write_text(transfer_config_text(model_folders, surrogate="cnn"))
    config = load_config(path)
    local = run_sweep(config, tmp_path / "local")
    on_ray = run_sweep(_on_ray(config, ray_cluster), tmp_path / "ray")
    assert local.name == on_ray.name
    files = sorted(p.relative_to(local) for p in [*local.glob("records/*/*.parquet"), local / "summary.csv"])
    assert any("from-cnn" in str(name) for name in files)
    assert [(on_ray / name).read_bytes() for name in files] == [(local / name).read_bytes() for name in files]


def test_run_settings_do_not_change_the_run_id(sweep_config):
    text = Path(sweep_config).read_text()
    import tomllib

    plain = parse_config(tomllib.loads(text), base=ROOT)
    on_ray = parse_config(tomllib.loads(text + '\n[run]\nexecutor = "ray"\ncpus_per_task = 2\nmax_retries = 1\n'),
                          base=ROOT)
    assert on_ray.run == RunSpec(executor="ray", cpus_per_task=2, max_retries=1)
    assert on_ray.to_dict() == plain.to_dict()
    execution = {"device": "cpu", "plans": {}}
    assert run_identity(on_ray, [], {"source_sha256": "x"}, execution) == run_identity(plain, [], {"source_sha256": "x"},
                                                                                       execution)


@pytest.mark.parametrize("table, message", [
    ('[run]\nexecutor = "cluster"', "`run.executor`"),
    ('[run]\naddress = "10.0.0.1:6379"', "needs executor = \"ray\""),
    ('[run]\nexecutor = "ray"\ncpus_per_task = 0', "`run.cpus_per_task`"),
    ('[run]\nexecutor = "ray"\nnodes = 4', "unknown config key(s) `run.nodes`"),
])
def test_bad_run_settings_are_refused(sweep_config, table, message):
    import tomllib

    with pytest.raises(ConfigError) as error:
        parse_config(tomllib.loads(Path(sweep_config).read_text() + "\n" + table + "\n"), base=ROOT)
    assert message in str(error.value)


# --------------------------------------------------------------------------------------------
# nothing lost


@pytest.mark.parametrize("address", ["127.0.0.1:1", "no-such-host.invalid:6379", "10.0.0.5", "ray://head:10001"])
def test_a_bad_address_is_one_line_exit_2_and_nothing_written(sweep_config, address, tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["sweep", str(sweep_config), "--results", str(results), "--address", address]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("advsweep sweep: error: ") and "\n" not in error and address in error
    assert not results.exists()


def _unit_task_processes() -> list[int]:
    """Ray worker processes running a unit now (Ray names a worker's process after the task it runs)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::_unit_task"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.mark.slow
def test_a_worker_killed_mid_unit_is_retried_and_nothing_is_lost(finished_run, sweep_config, ray_cluster, tmp_path):
    config = load_config(sweep_config)
    killed: list[int] = []
    stop = threading.Event()

    def kill_one_worker() -> None:
        while not stop.is_set() and not killed:
            busy = _unit_task_processes()
            if busy:
                time.sleep(0.5)  # mid-unit, not at its first line
                if busy[0] in _unit_task_processes():
                    os.kill(busy[0], signal.SIGKILL)
                    killed.append(busy[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    try:
        run_dir = run_sweep(_on_ray(config, ray_cluster), tmp_path)
    finally:
        stop.set()
        killer.join()
    assert len(killed) == 1, "no unit was running long enough to be killed"
    workers = {u["worker"]["pid"] for u in json.loads((run_dir / "manifest.json").read_text())["units"].values()}
    assert killed[0] not in workers  # the unit it ran was retried on another worker process
    _assert_same_run(run_dir, finished_run)


@pytest.mark.slow
def test_a_driver_killed_with_sigkill_resumes_from_the_ledger(finished_run, sweep_config, ray_cluster, sweep_killed_after,
                                                            tmp_path):
    """SIGKILL the real command mid-sweep on Ray, then run the same command again."""
    run_dir = tmp_path / "tiny" / finished_run.name  # the same run id as the in-process run
    done_dir = run_dir / "done"
    command, env = sweep_killed_after([str(sweep_config), "--address", ray_cluster], tmp_path, done_dir, 6)
    finished_before = {p.name: p.read_text() for p in done_dir.glob("*.json")}
    assert 6 <= len(finished_before) < len(plan(load_config(sweep_config)))
    assert not (run_dir / "summary.csv").exists()
    again = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "robust accuracy" in again.stdout
    for name, text in finished_before.items():  # the ledger's units were not run again
        assert (done_dir / name).read_text() == text
    _assert_same_run(run_dir, finished_run)
