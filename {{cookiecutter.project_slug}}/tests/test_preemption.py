"""Preemption under SLURM: scripts/slurm.sbatch run here with stand-ins for `srun` and
`scontrol`. SLURM's notice before the time limit (SIGUSR1 to the batch shell) makes every
rank save at one step; the script requeues the job, and the requeued job continues the
same run folder to the end, as if never stopped."""

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.checkpoint import load_checkpoint

# Left out of the quick subset (pytest -m "not slow"): every test here runs torchrun jobs that
# SLURM's notice stops and requeues.
pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = PROJECT_ROOT / "scripts" / "slurm.sbatch"
DRIVER = PROJECT_ROOT / "tests" / "kill_driver.py"
# 256 images over 2 processes in batches of 32: 4 optimizer steps per epoch, 8 in all. No
# periodic checkpoints: the one of step 6 can only come from the signal.
SETTINGS = ("data.val_size=63", "train.epochs=2", "run.save_every_steps=0")
# Rank 0 waits after step 5 until the signal has come, so that the test sends it at an
# exact step: every rank votes one step late (distributed.StopVote), so all stop after 6.
NOTICE_AT, STOPPED_AT = 5, 6
JOB_TIMEOUT_S = 300

# srun's stand-in: runs the node's command here, in place (exec keeps the pid, so the
# script's SIGUSR1 reaches torchrun as srun would pass it on), with srun's own options
# dropped and train.py swapped for tests/kill_driver.py, which trains the same way but
# can wait for the signal at an exact step (TRAINING_KILL).
TRAINING_SRUN = """#!/bin/bash
while [ "${1#--}" != "$1" ]; do shift; done
command=()
for argument in "$@"; do
    if [ "$argument" = train.py ]; then
        command+=("$DRIVER" rank 0 "$TRAINING_KILL")
    else
        command+=("$argument")
    fi
done
exec "${command[@]}"
"""
# A stand-in that trains nothing: it exits with $EXIT_CODE, at once without
# WAIT_FOR_NOTICE, else once SIGUSR1 has come.
IDLE_SRUN = """#!/bin/bash
if [ -z "${WAIT_FOR_NOTICE:-}" ]; then exit "$EXIT_CODE"; fi
trap 'echo "srun got SIGUSR1"; exit "$EXIT_CODE"' USR1
touch "$SRUN_STARTED"
while true; do sleep 0.05; done
"""
SCONTROL = """#!/bin/bash
case "$1" in
    show) printf 'localhost\\n' ;;
    *) echo "$@" >> "$SCONTROL_CALLS" ;;
esac
"""


def _tools(folder: Path, srun: str) -> Path:
    """A folder of stand-ins for srun and scontrol, and `python` (this interpreter)."""
    folder.mkdir()
    tools = {
        "srun": srun,
        "scontrol": SCONTROL,
        "python": f'#!/bin/sh\nexec "{sys.executable}" "$@"\n',
    }
    for name, text in tools.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _job_environment(base: dict, tools: Path, job_id: str, work: Path) -> dict:
    """What SLURM sets for a one-node job of 2 processes (CPU only), plus the stand-ins."""
    return {
        **base,
        "PATH": f"{tools}{os.pathsep}{base['PATH']}",
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_NNODES": "1",
        "SLURM_GPUS_ON_NODE": "2",
        "SLURM_CPUS_PER_TASK": "2",
        "SLURM_SUBMIT_DIR": str(PROJECT_ROOT),
        "CUDA_VISIBLE_DEVICES": "",
        "TMPDIR": str(work / "tmp"),
        "SCONTROL_CALLS": str(work / f"scontrol-{job_id}"),
        "DRIVER": str(DRIVER),
    }


def _start(arguments: list[str], env: dict, output: Path) -> subprocess.Popen:
    """`bash scripts/slurm.sbatch ARGUMENTS`, its output to OUTPUT.out and OUTPUT.err."""
    with open(f"{output}.out", "w") as stdout, open(f"{output}.err", "w") as stderr:
        process = subprocess.Popen(
            ["bash", str(SCRIPT), *arguments],
            cwd=output.parent,
            env=env,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    process.output = output
    return process


def _finish(
    process: subprocess.Popen, timeout: float = JOB_TIMEOUT_S
) -> subprocess.CompletedProcess:
    try:
        process.wait(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    stdout, stderr = (Path(f"{process.output}.{kind}").read_text() for kind in ("out", "err"))
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _wait_for(path: Path, text: str, process: subprocess.Popen) -> None:
    """Until `path` holds `text` (or the process ended, or JOB_TIMEOUT_S passed)."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (path.exists() and text in path.read_text()):
        if process.poll() is not None or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def _calls(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _output(result: subprocess.CompletedProcess) -> str:
    return result.stdout[-3000:] + result.stderr[-3000:]


def test_the_script_asks_for_the_notice_and_may_be_requeued():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    lines = SCRIPT.read_text(encoding="utf-8").splitlines()
    assert "#SBATCH --signal=B:USR1@300" in lines  # to the batch shell, 5 minutes ahead
    assert "#SBATCH --requeue" in lines
    assert "#SBATCH --open-mode=append" in lines  # the requeued job adds to the same log
    text = "\n".join(lines)
    assert "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1" in text
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text
    assert "run.resume=auto" in text


def test_slurm_script_starts_torchrun_on_every_node_with_the_job_rendezvous(tmp_path):
    """scripts/slurm.sbatch run with stand-ins for srun and scontrol: the torchrun command
    it would start on each node parses, and names the first node, the job and the run."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "scontrol").write_text("#!/bin/sh\nprintf 'node-a\\nnode-b\\n'\n")
    (fake_bin / "srun").write_text(
        '#!/bin/sh\nprintf "%s\\n" "$OMP_NUM_THREADS" "$@" > "$SRUN_ARGUMENTS"\n'
    )
    (fake_bin / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for tool in fake_bin.iterdir():
        tool.chmod(0o755)
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_NNODES": "2",
        "SLURM_GPUS_ON_NODE": "4",
        "SLURM_CPUS_PER_TASK": "16",
        "SLURM_SUBMIT_DIR": str(PROJECT_ROOT),
    }
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    env.update(slurm, PATH=f"{fake_bin}{os.pathsep}{env['PATH']}")
    env["SRUN_ARGUMENTS"] = str(tmp_path / "srun-arguments")
    result = subprocess.run(
        ["bash", str(SCRIPT), "optim.lr=0.1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "rendezvous at node-a:29500, run folder runs/slurm-4242" in result.stdout
    threads, *arguments = (tmp_path / "srun-arguments").read_text().splitlines()
    assert threads == "4"  # 16 cores shared by 4 processes
    assert arguments[:4] == ["--kill-on-bad-exit=1", "python", "-m", "torch.distributed.run"]

    from torch.distributed.run import get_args_parser

    from {{ cookiecutter.package_name }}.cli import parse_command_line

    torchrun = get_args_parser().parse_args(arguments[4:])
    assert (torchrun.nnodes, torchrun.nproc_per_node) == ("2", "4")
    assert (torchrun.rdzv_backend, torchrun.rdzv_endpoint) == ("c10d", "node-a:29500")
    assert (torchrun.rdzv_id, torchrun.max_restarts) == ("4242", 3)
    assert "SIGUSR1" in torchrun.signals_to_handle.split(",")
    assert torchrun.training_script == "train.py"
    cfg, _ = parse_command_line(torchrun.training_script_args)
    assert (cfg.run.dir, cfg.run.resume, cfg.optim.lr) == ("runs/slurm-4242", "auto", 0.1)


def _fake_torch(folder: Path, version: str, torchrun: str) -> Path:
    """A torch package of `version` whose torch/distributed/run.py reads `torchrun`."""
    (folder / "torch" / "distributed").mkdir(parents=True)
    (folder / "torch" / "__init__.py").write_text("")
    (folder / "torch" / "distributed" / "run.py").write_text(torchrun)
    (folder / f"torch-{version}.dist-info").mkdir()
    metadata = f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n"
    (folder / f"torch-{version}.dist-info" / "METADATA").write_text(metadata)
    return folder


@pytest.mark.parametrize(
    ("python_path", "expected"),
    [
        (
            "older",
            "error: the torchrun of torch 2.8.0 cannot pass SIGUSR1 on to its processes "
            "(no --signals-to-handle); upgrade torch (2.9 or newer)",
        ),
        ("none", " has no torch; activate the project environment"),
    ],
)
def test_a_torchrun_that_cannot_pass_the_notice_on_is_refused_in_one_line(
    tmp_path, python_path, expected
):
    """torchrun learnt --signals-to-handle in torch 2.9: an older one would die of SIGUSR1
    and leave its processes training, so the script stops before starting anything."""
    tools = _tools(tmp_path / "bin", IDLE_SRUN)
    (tmp_path / "tmp").mkdir()
    env = _job_environment(os.environ, tools, "78", tmp_path)
    env["EXIT_CODE"] = "0"
    if python_path == "older":  # found before the real torch
        older = _fake_torch(tmp_path / "older", "2.8.0", 'parser.add_argument("--nnodes")\n')
        env["PYTHONPATH"] = str(older)
    else:  # a Python without torch: no site-packages at all
        env["PYTHONNOUSERSITE"] = "1"
        (tools / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    result = _finish(_start([], env, tmp_path / "job"), timeout=180)
    assert result.returncode == 2, _output(result)
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and line.endswith(expected), line
    assert "rendezvous" not in result.stdout


@pytest.mark.parametrize(
    ("notice", "srun_exit", "requeued", "script_exit"),
    [
        (True, 1, True, 0),  # stopped by the notice: requeued
        (True, 0, False, 0),  # finished before it could stop: nothing left to do
        (False, 0, False, 0),  # finished within the time limit
        (False, 3, False, 3),  # failed: not requeued, or it would fail forever
    ],
)
def test_the_script_passes_the_notice_on_and_requeues_only_a_stopped_run(
    tmp_path, notice, srun_exit, requeued, script_exit
):
    tools = _tools(tmp_path / "bin", IDLE_SRUN)
    (tmp_path / "tmp").mkdir()
    env = _job_environment(os.environ, tools, "77", tmp_path)
    env.update(EXIT_CODE=str(srun_exit), SRUN_STARTED=str(tmp_path / "started"))
    if notice:
        env["WAIT_FOR_NOTICE"] = "1"
    job = _start([], env, tmp_path / "job")
    try:
        if notice:
            deadline = time.monotonic() + 60
            while not (tmp_path / "started").exists() and job.poll() is None:
                assert time.monotonic() < deadline, "the srun stand-in did not start"
                time.sleep(0.02)
            os.kill(job.pid, signal.SIGUSR1)  # as SLURM does with --signal=B:USR1
    finally:
        result = _finish(job, timeout=180)
    assert result.returncode == script_exit, _output(result)
    assert ("srun got SIGUSR1" in result.stdout) == notice, _output(result)
    assert _calls(tmp_path / "scontrol-77") == (["requeue 77"] if requeued else [])


@pytest.fixture(scope="module")
def preempted_job(tmp_path_factory, small_overrides, subprocess_env):
    """The script's job, preempted: SIGUSR1 to the script once rank 0 has finished step
    NOTICE_AT; then the requeued job (the same command and job id, SLURM_RESTART_COUNT=1,
    and no waiting).
    Beside the first, the same job never stopped (another job id), for comparison.
    Returns (ROOT, {"preempted", "requeued", "straight": CompletedProcess, "saved_step": the
    step of last.pt when the preempted job ended})."""
    root = tmp_path_factory.mktemp("preemption")
    (root / "tmp").mkdir()  # what killed processes leave behind stays in here
    tools = _tools(root / "bin", TRAINING_SRUN)
    arguments = [*small_overrides, *SETTINGS]

    def job(job_id: str, kill: str, **more) -> dict:
        env = _job_environment(subprocess_env, tools, job_id, root)
        port = str(_free_port())
        return {
            **env,
            "RUN_DIR": str(root / job_id),
            "RDZV_PORT": port,
            "TRAINING_KILL": kill,
            **more,
        }

    preempted = _start(arguments, job("101", f"notice:{NOTICE_AT}"), root / "preempted")
    straight = _start(arguments, job("202", "none"), root / "straight")
    results = {}
    try:
        notice = f"waiting for a stop signal at step {NOTICE_AT}"
        _wait_for(root / "preempted.out", notice, preempted)
        with contextlib.suppress(ProcessLookupError):
            os.kill(preempted.pid, signal.SIGUSR1)  # to the batch shell, as SLURM does
        results["preempted"] = _finish(preempted)
        saved = load_checkpoint(root / "101" / "checkpoints" / "last.pt")  # before the requeue
        results["saved_step"] = saved["progress"]["global_step"]
        requeued = job("101", "none", SLURM_RESTART_COUNT="1")
        results["requeued"] = _finish(_start(arguments, requeued, root / "requeued"))
        results["straight"] = _finish(straight)
    finally:
        for process in (preempted, straight):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    return root, results


def test_the_notice_stops_every_rank_at_one_step_and_saves(preempted_job):
    root, results = preempted_job
    preempted = results["preempted"]
    assert preempted.returncode == 0, _output(preempted)
    assert "SIGUSR1: the time limit is near" in preempted.stdout
    # Both ranks got the signal (torchrun passed it on), stopped after the same step, and
    # exited with 128 + SIGUSR1.
    assert (
        re.findall(r"stopped by SIGUSR1 at step (\d+)", preempted.stdout) == [str(STOPPED_AT)] * 2
    ), _output(preempted)
    assert "[rank 1]" in preempted.stdout
    for rank in (0, 1):
        assert f"rank {rank} exits with {128 + signal.SIGUSR1}" in preempted.stdout
    assert results["saved_step"] == STOPPED_AT
    assert f"requeueing job 101: it continues {root / '101'}" in preempted.stdout
    assert _calls(root / "scontrol-101") == ["requeue 101"]


def test_the_requeued_job_continues_the_run_as_if_never_stopped(preempted_job, assert_same_run):
    root, results = preempted_job
    requeued, straight = results["requeued"], results["straight"]
    assert requeued.returncode == 0, _output(requeued)
    assert "job 101 (restart 1)" in requeued.stdout
    newest = root / "101" / "checkpoints" / f"step-{STOPPED_AT:08d}.pt"
    assert f"resumed from {newest}" in requeued.stdout, _output(requeued)
    assert "rank 0 exits with 0" in requeued.stdout
    assert _calls(root / "scontrol-101") == ["requeue 101"]  # not requeued a second time
    assert straight.returncode == 0, _output(straight)
    assert _calls(root / "scontrol-202") == []
    assert_same_run(root / "202", root / "101")
