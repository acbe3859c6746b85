"""Runs training the way train.py does, but SIGKILLs itself at an exact point (or waits
there for a stop signal).

Used by test_resume.py and test_distributed.py: a kill at a chosen optimizer step, without
racing a timer, shows whether a run resumed with run.resume=auto ends exactly where an
uninterrupted run does. Modes:

    python tests/kill_driver.py once KILL [key=value ...]
        one training run (also one torchrun rank) that kills itself at KILL;
    torchrun ... tests/kill_driver.py rank RANK KILL [key=value ...]
        the same, but only rank RANK kills itself, and only in the first attempt of the
        job (TORCHELASTIC_RESTART_COUNT=0): a job restarted by --max-restarts runs through;
    python tests/kill_driver.py plan PLAN.json
        runs of several segments each, in forked children of this one process, so torch
        is imported once for all of them; writes what happened to PLAN["result"];
    python tests/kill_driver.py chaos RESULT.json KILLS SEED [key=value ...]
        trains with run.resume=auto in a child killed at random moments, KILLS times;
        after every kill, records whether the newest checkpoint on disk loads;
    python tests/kill_driver.py save-ops RESULT.json [key=value ...]
        the same, killing the first save of each child before its 1st, 2nd, ... file
        operation, until one completes.

KILL is `none` or `WHEN:STEP`, WHEN being one of
    step         after optimizer step STEP, before anything is saved for it;
    save_before  when the checkpoint of step STEP is about to be written;
    save_after   just after the checkpoint of step STEP was written;
    scheduler    inside scheduler.step() after optimizer step STEP (the optimizer has
                 stepped, the scheduler not yet);
    save_op      before file operation number STEP of the first save (see
                 kill_inside_first_save);
    notice       not a kill: after optimizer step STEP, print NOTICE_WAIT and wait (at
                 most NOTICE_WAIT_S) until a stop signal (Ctrl-C, SIGTERM, SIGUSR1) has
                 come, so that a test can send one at an exact step.
"""

import json
import mmap
import os
import random
import signal
import sys
import time
from pathlib import Path

import torch

from {{ cookiecutter.package_name }}.checkpoint import (
    CheckpointError,
    CheckpointManager,
    load_checkpoint,
)
from {{ cookiecutter.package_name }}.cli import parse_command_line
from {{ cookiecutter.package_name }}.model import flops_per_sample
from {{ cookiecutter.package_name }}.stopping import active_stop
from {{ cookiecutter.package_name }}.train import Hooks, run

NOTICE_WAIT, NOTICE_WAIT_S = "waiting for a stop signal at step", 120


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install_kill(kill: str, hooks: Hooks) -> None:
    """Set `hooks` (or, inside scheduler.step, torch's scheduler) so that this process
    SIGKILLs itself at `kill`."""
    if kill == "none":
        return
    when, step = kill.split(":")
    step = int(step)
    if when in ("step", "save_before", "save_after"):
        point = {"step": "after_step", "save_before": "before_save", "save_after": "after_save"}

        def die_at_step(state) -> None:
            if state.global_step == step:
                die()

        setattr(hooks, point[when], chain(getattr(hooks, point[when]), die_at_step))
    elif when == "scheduler":
        original_step = torch.optim.lr_scheduler.LRScheduler.step

        def scheduler_step(self, *args, **kwargs):
            # last_epoch counts the scheduler's own steps: STEP - 1 before the one that
            # follows optimizer step STEP (the call made by the constructor sees -1).
            if self.last_epoch == step - 1:
                die()
            return original_step(self, *args, **kwargs)

        torch.optim.lr_scheduler.LRScheduler.step = scheduler_step
    elif when == "save_op":
        kill_inside_first_save(step, hooks)
    elif when == "notice":
        hooks.after_step = chain(hooks.after_step, wait_for_a_stop_signal_at(step))
    else:
        raise SystemExit(f"unknown kill point {kill!r}")


def chain(first, second):
    """A hook that calls `first`, then `second`."""

    def both(state) -> None:
        first(state)
        second(state)

    return both


def wait_for_a_stop_signal_at(step: int):
    """An after_step hook that, at optimizer step `step`, waits for a stop signal."""

    def wait(state) -> None:
        if state.global_step != step:
            return
        print(f"{NOTICE_WAIT} {step}", flush=True)
        deadline = time.monotonic() + NOTICE_WAIT_S
        while active_stop().received is None:
            if time.monotonic() > deadline:
                raise SystemExit(f"no stop signal came within {NOTICE_WAIT_S} s")
            time.sleep(0.01)

    return wait


FILE_OPERATIONS = ("fsync", "replace", "link", "unlink")


def kill_inside_first_save(index: int, hooks: Hooks) -> None:
    """Die just before the `index`-th file operation (os.fsync, os.replace, os.link,
    os.unlink) of the first checkpoint save of this process; a save with fewer
    operations completes, and so does the run."""
    count = {"operations": 0, "saves": 0, "in_first_save": False}

    def counted(name: str, function):
        def operation(*args, **kwargs):
            if count["in_first_save"]:
                count["operations"] += 1
                if count["operations"] == index:
                    print(f"killed before os.{name}{args}", flush=True)
                    die()
            return function(*args, **kwargs)

        return operation

    for name in FILE_OPERATIONS:
        setattr(os, name, counted(name, getattr(os, name)))

    def before_save(state) -> None:
        count["saves"] += 1
        count["in_first_save"] = count["saves"] == 1

    def after_save(state) -> None:
        count["in_first_save"] = False

    hooks.before_save = chain(hooks.before_save, before_save)
    hooks.after_save = chain(hooks.after_save, after_save)


def train(argv: list[str], kill: str = "none", hooks: Hooks | None = None) -> int:
    hooks = hooks or Hooks()
    install_kill(kill, hooks)
    cfg, _ = parse_command_line(argv)
    return run(cfg, hooks)


def warm_up() -> None:
    """Import here, once, what training imports lazily, rather than in every forked child."""
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # imports torch._dynamo: ~1 s
    import torchvision.datasets  # noqa: F401  (data.dataset=imagefolder)

    # The model summary's first FLOP count sets up torch's dispatch machinery (~20 ms).
    flops_per_sample(torch.nn.Conv2d(3, 1, 1), in_channels=3, image_size=1)


def fork_training(argv: list[str], kill: str, log: Path, in_save=None) -> int:
    """Start a child in its own process group that trains with output to `log`; its pid.

    With `in_save` (shared memory), the child sets its first byte while it is saving.
    """
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setpgid(0, 0)  # DataLoader workers join this group: the parent ends them all
        descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(descriptor, 1)
        os.dup2(descriptor, 2)
        code = train(argv, kill, flag_saves(in_save) if in_save is not None else None)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def flag_saves(in_save) -> Hooks:
    """Hooks by which in_save[0] is 1 while a save runs, and in_save[1] becomes 1 at the
    first save."""

    def before_save(state) -> None:
        in_save[0] = in_save[1] = 1

    def after_save(state) -> None:
        in_save[0] = 0

    return Hooks(before_save=before_save, after_save=after_save)


def reap(pid: int) -> list:
    """Wait for child `pid`, end what is left of its process group, return its fate."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # the zombie still holds the group
    try:
        os.killpg(pid, signal.SIGKILL)  # leftover DataLoader workers of a killed child
    except ProcessLookupError:
        pass
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return ["signal", os.WTERMSIG(status)]
    return ["exit", os.WEXITSTATUS(status)]


def inspect_folder(folder: Path) -> dict:
    """What a resume would find in `folder`; removes nothing (orphans stay for the next run).

    step_files, orphans: names; newest: the first candidate; loaded, step: the newest
    checkpoint that loads, and its global step; error: why none loads; last_error: why
    last.pt does not load (absent when it does).
    """
    found = {"step_files": [], "orphans": [], "newest": None, "loaded": None, "step": None}
    if not folder.is_dir():
        return found
    found["step_files"] = sorted(path.name for path in folder.glob("step-*.pt"))
    found["orphans"] = sorted(path.name for path in folder.glob(".*"))  # temporary files
    manager = CheckpointManager(folder, is_main=False)  # is_main=False: removes nothing
    newest = manager.latest()
    found["newest"] = newest.name if newest else None
    try:
        loaded = manager.load_newest_valid()
    except CheckpointError as error:
        found["error"] = str(error)
    else:
        if loaded:
            found["loaded"] = loaded[0].name
            found["step"] = loaded[1]["progress"]["global_step"]
    if (folder / "last.pt").exists():
        try:
            load_checkpoint(folder / "last.pt")
        except CheckpointError as error:
            found["last_error"] = str(error)
    return found


def run_plan(plan_file: Path, lanes: int = 2) -> None:
    """plan = {"result": PATH, "logs": FOLDER, "runs": {NAME: {"dir": RUN_DIR, "segments":
    [{"argv": [...], "kill": KILL}, ...]}}}; result[NAME] = [{"fate": [...], **inspection},
    ...]: each segment's fate and what was on disk after it (see inspect_folder).

    `lanes` runs go on side by side (each one's segments in order), one per CPU core.
    """
    plan = json.loads(plan_file.read_text(encoding="utf-8"))
    warm_up()
    waiting = list(plan["runs"].items())
    result = {name: [] for name, _ in waiting}
    running = {}  # pid -> (name, run)

    def start(name: str, run: dict) -> None:
        index = len(result[name])
        segment = run["segments"][index]
        log = Path(plan["logs"]) / f"{name}-{index}.log"
        running[fork_training(segment["argv"], segment["kill"], log)] = (name, run)

    while waiting or running:
        while waiting and len(running) < lanes:
            start(*waiting.pop(0))
        pid = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT).si_pid
        name, run = running.pop(pid)
        fate = reap(pid)
        result[name].append({"fate": fate, **inspect_folder(Path(run["dir"]) / "checkpoints")})
        if len(result[name]) < len(run["segments"]):
            start(name, run)
    Path(plan["result"]).write_text(json.dumps(result, indent=1), encoding="utf-8")


def run_chaos(result_file: Path, kills: int, seed: int, argv: list[str]) -> None:
    """Kill a resuming run at random moments; after each kill, record what is on disk."""
    cfg, _ = parse_command_line(argv)
    folder = Path(cfg.run.dir) / "checkpoints"
    warm_up()
    rng = random.Random(seed)
    in_save = mmap.mmap(-1, 2)  # shared with the children, see flag_saves
    records = []
    while len(records) < kills:
        pid = fork_training(argv, "none", result_file.with_suffix(".log"), in_save)
        # The random moment counts from the child's first save, not from the fork: on a
        # busy machine a child may need longer than the whole delay just to start.
        started = time.monotonic()
        while not in_save[1] and time.monotonic() - started < 60:
            time.sleep(0.005)
        delay = rng.uniform(0.0, 0.3)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        record = {"delay": round(delay, 3), "fate": reap(pid), "in_save": bool(in_save[0])}
        in_save[0] = in_save[1] = 0
        records.append({**record, **inspect_folder(folder)})
    result_file.write_text(json.dumps(records, indent=1), encoding="utf-8")


def run_every_save_operation(result_file: Path, argv: list[str]) -> None:
    """Resume, and kill the first save before its 1st, 2nd, 3rd ... file operation, until a
    save has fewer operations (that run then finishes); record what is on disk each time."""
    cfg, _ = parse_command_line(argv)
    folder = Path(cfg.run.dir) / "checkpoints"
    warm_up()
    # First two whole saves, so that the kills below find last.* in place to be switched.
    reap(fork_training([*argv, "train.max_steps=2"], "none", result_file.with_suffix(".log")))
    records = []
    for index in range(1, 200):
        pid = fork_training(argv, f"save_op:{index}", result_file.with_suffix(".log"))
        records.append({"index": index, "fate": reap(pid), **inspect_folder(folder)})
        if records[-1]["fate"][0] == "exit":
            break
    result_file.write_text(json.dumps(records, indent=1), encoding="utf-8")


def main(argv: list[str]) -> int:
    mode, *rest = argv
    if mode == "once":
        return train(rest[1:], rest[0])
    if mode == "rank":
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        chosen = os.environ.get("RANK") == rest[0]
        code = train(rest[2:], rest[1] if first_attempt and chosen else "none")
        print(f"rank {os.environ.get('RANK')} exits with {code}", flush=True)
        return code
    if mode == "plan":
        run_plan(Path(rest[0]))
        return 0
    if mode == "chaos":
        run_chaos(Path(rest[0]), int(rest[1]), int(rest[2]), rest[3:])
        return 0
    if mode == "save-ops":
        run_every_save_operation(Path(rest[0]), rest[1:])
        return 0
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
