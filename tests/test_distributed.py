"""Training beyond one process: launch environments, --resume auto, and (through subprocesses on
127.0.0.1 only) two torchrun "nodes", an elastic restart after SIGKILL, a changed world size,
SLURM's srun simulated by its environment, and the failures that must end a run instead of
hanging it. Every process a test starts is killed at its end, with all its descendants."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from frcnn.cli.main import build_parser
from frcnn.config import TrainConfig
from frcnn.engine import (
    RESUME_AUTO,
    Launch,
    detect_launch,
    first_host,
    load_checkpoint,
    read_log,
    resolve_resume,
)
from test_cli import TINY

TORCHRUN = (sys.executable, "-m", "torch.distributed.run")
TRAIN = ("-m", "frcnn", "train", "--no-eval", "--device", "cpu", "--resume", "auto")
ITERATIONS = 6
RUN_SETTINGS = ("--set", *TINY, f"train.max_iters={ITERATIONS}")
# The variables of a launcher that the test process may itself have been started under.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT",
                    "TORCHELASTIC_USE_AGENT_STORE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
                    "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds worker processes in /proc")


# -- the launch environment, --resume auto, the timeout setting


@pytest.mark.parametrize("nodelist, host", [
    ("node[01-04,07]", "node01"), ("a,b", "a"), ("gpu[3-4]-ib", "gpu3-ib"), ("node[007]", "node007"),
    ("rack[2-3]-n[10-11],x", "rack2-n10"), ("n7", "n7"), (" c[9,11] ", "c9"),
])
def test_first_host_of_a_slurm_node_list(nodelist: str, host: str) -> None:
    assert first_host(nodelist) == host


@pytest.mark.parametrize("nodelist", ["", "node[01", "node[]", ",a", "a]b", "a[[1]]"])
def test_a_malformed_node_list_is_refused(nodelist: str) -> None:
    with pytest.raises(ValueError, match="SLURM node list"):
        first_host(nodelist)


SLURM_TASK = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456",
              "SLURM_JOB_NODELIST": "gpu[12-13]"}


@pytest.mark.parametrize("environ, expected", [
    ({}, Launch()),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_NODELIST": "a"}, Launch()),
    ({"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, Launch()),
    (SLURM_TASK, Launch("slurm", 3, 8, 1, "gpu12", 20000 + 123456 % 20000)),
    ({**SLURM_TASK, "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29400"}, Launch("slurm", 3, 8, 1, "10.0.0.5", 29400)),
    ({**SLURM_TASK, "RANK": "5", "WORLD_SIZE": "6", "LOCAL_RANK": "2", "MASTER_ADDR": "h0", "MASTER_PORT": "29500",
      "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": "2"},
     Launch("torchrun", 5, 6, 2, "h0", 29500, True, 2)),
])
def test_the_launchers_environment_gives_the_process_its_place(environ: dict[str, str], expected: Launch) -> None:
    assert detect_launch(environ) == expected


@pytest.mark.parametrize("environ, message", [
    ({**SLURM_TASK, "SLURM_NTASKS": "two"}, "SLURM_NTASKS='two'"),
    ({**SLURM_TASK, "SLURM_PROCID": "8"}, "SLURM_PROCID=8 is not below SLURM_NTASKS=8"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, "without MASTER_ADDR or SLURM_JOB_NODELIST"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "1"}, "MASTER_ADDR is not set"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h"}, "MASTER_PORT=None"),
])
def test_a_broken_launch_environment_is_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        detect_launch(environ)


def test_resume_auto_resumes_only_when_the_checkpoint_exists(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    assert resolve_resume(RESUME_AUTO, checkpoint) is False and resolve_resume(False, checkpoint) is False
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        resolve_resume(True, checkpoint)
    checkpoint.write_bytes(b"")
    assert resolve_resume(RESUME_AUTO, checkpoint) is True and resolve_resume(True, checkpoint) is True
    with pytest.raises(ValueError, match="resume must be"):
        resolve_resume("always", checkpoint)


@pytest.mark.parametrize("argv, resume", [([], False), (["--resume"], True), (["--resume", "auto"], "auto"),
                                          (["--resume", "--no-eval"], True)])
def test_the_resume_option(argv: list[str], resume: bool | str) -> None:
    assert build_parser().parse_args(["train", *argv]).resume == resume


def test_the_resume_option_refuses_other_words() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--resume", "always"])


@pytest.mark.parametrize("value", [0, -1.0, None, "soon", True, float("inf")])
def test_the_distributed_timeout_must_be_positive_seconds(value: object) -> None:
    with pytest.raises(ValueError, match="TrainConfig.dist_timeout_s must be a number > 0"):
        TrainConfig(dist_timeout_s=value)


# -- processes


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _worker(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of the training process of ``rank`` below a torchrun launcher."""
    for pid in _descendants(launcher.pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no worker of rank {rank} below process {launcher.pid}")


class Processes:
    """Processes started in ``workdir``, their output in files there."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, *command: str, env: Mapping[str, str] = {}, cwd: Path | None = None,
              launcher: Sequence[str] = (sys.executable,)) -> subprocess.Popen:
        environ = {key: value for key, value in os.environ.items() if key not in LAUNCH_VARIABLES}
        environ.update({"XDG_CACHE_HOME": str(self.workdir / "cache"), "OMP_NUM_THREADS": "1", **env})
        with open(self.workdir / f"{name}.out", "w") as out, open(self.workdir / f"{name}.err", "w") as err:
            process = subprocess.Popen([*launcher, *command], cwd=cwd or self.workdir, env=environ, stdout=out,
                                       stderr=err, stdin=subprocess.DEVNULL)
        process.name = name
        self.started.append(process)
        return process

    def finish(self, process: subprocess.Popen, timeout: float = 240) -> str:
        """Wait for ``process`` to end (a hang fails the test); its stderr."""
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{process.name} did not end within {timeout} s")
        return (self.workdir / f"{process.name}.err").read_text()

    def kill_all(self) -> None:
        for process in self.started:
            for pid in [*_descendants(process.pid), process.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.wait()


@contextmanager
def processes(workdir: Path) -> Iterator[Processes]:
    started = Processes(workdir)
    try:
        yield started
    finally:
        started.kill_all()


def _ok(process: subprocess.Popen, stderr: str) -> str:
    assert process.returncode == 0, stderr[-3000:]
    return stderr


def _one_error_line(process: subprocess.Popen, stderr: str) -> str:
    """The one line by which a failed training process explains itself."""
    assert process.returncode == 1, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("frcnn train: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def _slurm_task(rank: int, world_size: int, port: int) -> dict[str, str]:
    """The variables srun gives a task (the node list names this machine), and the store's port."""
    return {"SLURM_PROCID": str(rank), "SLURM_NTASKS": str(world_size), "SLURM_LOCALID": str(rank),
            "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_ID": "4242", "MASTER_PORT": str(port)}


def _assert_same_weights(folder: Path, reference: Path) -> None:
    weights, expected = (load_checkpoint(path / "model_final.pt")["model"] for path in (folder, reference))
    assert weights.keys() == expected.keys()
    for name, value in weights.items():
        assert torch.equal(value, expected[name]), name


def _log_without_times(folder: Path) -> list[dict[str, float]]:
    """The records of log.jsonl without the fields that depend on the machine's speed."""
    return [{key: value for key, value in record.items() if key not in ("elapsed_s", "images_per_s")}
            for record in read_log(folder / "log.jsonl")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def straight(workdir: Path) -> Path:
    """The reference: two processes on one node, never stopped."""
    with processes(workdir) as started:
        run = started.start("straight", "--standalone", "--nproc-per-node", "2", *TRAIN, "--out", "straight",
                            *RUN_SETTINGS, launcher=TORCHRUN)
        _ok(run, started.finish(run))
    return workdir / "straight"


@pytest.fixture(scope="module")
def two_nodes(workdir: Path) -> Path:
    """The same run on two torchrun "nodes" of one process each, meeting at a c10d rendezvous."""
    endpoint = f"127.0.0.1:{_free_port()}"
    with processes(workdir) as started:
        nodes = [started.start(f"node{index}", "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                               "--rdzv-endpoint", endpoint, "--rdzv-id", "frcnn-test", *TRAIN, "--out", "nodes",
                               *RUN_SETTINGS, launcher=TORCHRUN) for index in range(2)]
        for node in nodes:
            _ok(node, started.finish(node))
    return workdir / "nodes"


# -- launches that must succeed


@linux_only
def test_two_torchrun_nodes_train_one_run(two_nodes: Path, straight: Path) -> None:
    checkpoint = load_checkpoint(two_nodes / "checkpoint.pt")
    assert checkpoint["progress"]["iteration"] == ITERATIONS and len(checkpoint["rng"]) == 2
    assert len(list(two_nodes.glob("events.out.tfevents.*"))) == 1
    assert _log_without_times(two_nodes) == _log_without_times(straight)
    _assert_same_weights(two_nodes, straight)


@linux_only
def test_a_killed_worker_is_restarted_and_the_run_ends_as_if_never_stopped(workdir: Path, straight: Path) -> None:
    with processes(workdir) as started:
        run = started.start("elastic", "--standalone", "--nproc-per-node", "2", "--max-restarts", "1", *TRAIN,
                            "--out", "elastic", *RUN_SETTINGS, launcher=TORCHRUN)
        deadline = time.monotonic() + 240
        while not (workdir / "elastic" / "checkpoint.pt").exists():
            assert run.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
            time.sleep(0.01)
        os.kill(_worker(run, 0), signal.SIGKILL)
        stderr = _ok(run, started.finish(run))
    assert stderr.count("resuming from elastic/checkpoint.pt") == 1, "the workers were not restarted"
    assert [record["iter"] for record in read_log(workdir / "elastic" / "log.jsonl")] == list(
        range(1, ITERATIONS + 1))
    _assert_same_weights(workdir / "elastic", straight)


@linux_only
def test_a_run_resumed_on_fewer_processes_continues(workdir: Path, two_nodes: Path) -> None:
    shutil.copytree(two_nodes, workdir / "shrunk")
    with processes(workdir) as started:
        run = started.start("shrunk", "--nnodes", "1:2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                            "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--rdzv-conf", "last_call_timeout=1",
                            *TRAIN, "--out", "shrunk", "--set", f"train.max_iters={ITERATIONS + 2}",
                            launcher=TORCHRUN)
        stderr = _ok(run, started.finish(run))
    assert "resuming from shrunk/checkpoint.pt" in stderr
    checkpoint = load_checkpoint(workdir / "shrunk" / "checkpoint.pt")
    assert checkpoint["progress"]["iteration"] == ITERATIONS + 2 and len(checkpoint["rng"]) == 1
    log = _log_without_times(workdir / "shrunk")
    assert [record["iter"] for record in log] == list(range(1, ITERATIONS + 3))
    assert log[:ITERATIONS] == _log_without_times(two_nodes)
    # An iteration of one process is a smaller part of an epoch than one of two processes.
    assert log[-1]["epoch"] - log[-2]["epoch"] < log[1]["epoch"] - log[0]["epoch"]


@linux_only
def test_slurm_tasks_without_torchrun_form_one_group(workdir: Path, straight: Path) -> None:
    port = _free_port()
    with processes(workdir) as started:
        tasks = [started.start(f"slurm{rank}", *TRAIN, "--out", "slurm", *RUN_SETTINGS,
                               env=_slurm_task(rank, 2, port)) for rank in range(2)]
        for task in tasks:
            _ok(task, started.finish(task))
    assert len(load_checkpoint(workdir / "slurm" / "checkpoint.pt")["rng"]) == 2
    _assert_same_weights(workdir / "slurm", straight)


# -- failures that must end the run with one line, not hang it


@linux_only
def test_a_group_that_never_forms_ends_with_one_line(workdir: Path) -> None:
    with processes(workdir) as started:
        alone = started.start("alone", *TRAIN, "--out", "alone", *RUN_SETTINGS, "train.dist_timeout_s=5",
                              env=_slurm_task(0, 2, _free_port()))
        line = _one_error_line(alone, started.finish(alone, timeout=120))
    assert "the process group did not form: only 1 of 2 processes joined" in line
    assert "train.dist_timeout_s = 5 s" in line and "srun" in line


@linux_only
def test_a_torchrun_rendezvous_that_never_completes_ends(workdir: Path) -> None:
    with processes(workdir) as started:
        node = started.start("lonely", "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                             "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--rdzv-conf", "join_timeout=5",
                             *TRAIN, "--out", "lonely", *RUN_SETTINGS, launcher=TORCHRUN)
        stderr = started.finish(node, timeout=120)
    assert node.returncode != 0 and "RendezvousTimeoutError" in stderr
    assert not (workdir / "lonely").exists()


@linux_only
def test_a_peer_that_stops_answering_ends_the_run_and_the_checkpoint_stays(workdir: Path) -> None:
    port = _free_port()
    settings = ("--set", *TINY, "train.max_iters=1000", "train.dist_timeout_s=30")
    with processes(workdir) as started:
        tasks = [started.start(f"hung{rank}", *TRAIN, "--out", "hung", *settings, env=_slurm_task(rank, 2, port))
                 for rank in range(2)]
        deadline = time.monotonic() + 240
        while not (workdir / "hung" / "checkpoint.pt").exists():
            assert tasks[0].poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
            time.sleep(0.01)
        os.kill(tasks[1].pid, signal.SIGSTOP)
        line = _one_error_line(tasks[0], started.finish(tasks[0], timeout=120))
    assert line.startswith("frcnn train: error: rank 0 lost the process group: rank 1 stopped answering")
    assert "train.dist_timeout_s = 30 s" in line
    iteration = load_checkpoint(workdir / "hung" / "checkpoint.pt")["progress"]["iteration"]
    assert iteration >= 2 and iteration % 2 == 0


@linux_only
def test_an_output_folder_that_is_not_shared_stops_every_rank_at_start(workdir: Path) -> None:
    port = _free_port()
    with processes(workdir) as started:
        tasks = []
        for rank in range(2):  # each rank in a folder of its own: --out is a different folder on each "node"
            (workdir / f"node{rank}_disk").mkdir()
            tasks.append(started.start(f"unshared{rank}", *TRAIN, "--out", "run", *RUN_SETTINGS,
                                       "train.dist_timeout_s=10", env=_slurm_task(rank, 2, port),
                                       cwd=workdir / f"node{rank}_disk"))
        lines = [_one_error_line(task, started.finish(task, timeout=120)) for task in tasks]
    for line in lines:
        assert "the output folder run is not shared storage: rank 1 on " in line
    assert not (workdir / "node0_disk" / "run" / "checkpoint.pt").exists()
