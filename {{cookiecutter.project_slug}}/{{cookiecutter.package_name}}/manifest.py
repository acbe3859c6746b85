"""The run's manifest: what a result depends on besides its config, written beside it.

`manifest.json` in the run folder holds the Python, torch, CUDA and cuDNN versions, the
device model, the installed packages, the project's git commit and whether its tree had
uncommitted changes (the diff is saved beside it as `git.diff`), the fingerprint of the data
(data/fingerprint.py), the host and the start time. A resumed run rewrites it for the new
session and keeps a summary of each earlier one under `earlier_sessions` (its diff, if any,
as `git.resume-N.diff`), so the top level always describes the latest session.

On resume, `compare_for_resume` tells what changed since the run's last session: another
torch, CUDA, cuDNN or device (a warning: the continued run is not promised to be
bit-identical to one never interrupted), and changed data, which `check_resume` refuses
unless run.allow_changed_data is set.
"""

import datetime
import importlib.metadata
import json
import logging
import os
import platform
import socket
import subprocess
from pathlib import Path

import torch

from .config import ConfigError
from .data.fingerprint import describe_change
from .files import atomic_write_text, read_small_json

logger = logging.getLogger(__name__.rsplit(".", 1)[0])

MANIFEST = "manifest.json"
# A manifest is some kilobytes (the git diff is kept beside it): far more is not one.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
# The project's source: its git repository is the one whose commit a run records.
SOURCE = Path(__file__).resolve().parent
# git is asked with a time limit: a slow network filesystem must not hold up training.
GIT_TIMEOUT_S = 10
# The versions that decide the numerics, and how a warning names them.
NUMERICS = {"torch": "torch", "cuda": "CUDA", "cudnn": "cuDNN", "device_model": "device"}


def build_manifest(data_fingerprint: dict, device: torch.device) -> dict:
    """What this process runs on and with, and the data's fingerprint (no git: see
    write_manifest). Cheap enough to build at every start, for compare_for_resume."""
    on_cuda = torch.device(device).type == "cuda"
    return {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if on_cuda else None,
        "cudnn": torch.backends.cudnn.version() if on_cuda else None,
        "device": str(device),
        "device_model": torch.cuda.get_device_name(device) if on_cuda else cpu_model(),
        "packages": installed_packages(),
        "data": data_fingerprint,
    }


def write_manifest(
    run_dir: Path, data_fingerprint: dict, device: torch.device, source: Path = SOURCE
) -> dict:
    """Write `<run_dir>/manifest.json` (atomically) for this session, with the git state of
    the project at `source` and, when its tree has uncommitted changes, the diff beside it.
    An earlier session's manifest is kept in summary under `earlier_sessions`. Returns the
    manifest written."""
    run_dir = Path(run_dir)
    manifest = build_manifest(data_fingerprint, device)
    earlier = read_manifest(run_dir)
    sessions = [] if earlier is None else [*earlier.pop("earlier_sessions", []), earlier]
    state = git_state(source, leave_out=run_dir)
    if state is not None:
        diff = state.pop("diff")
        if diff:
            name = f"git.resume-{len(sessions)}.diff" if sessions else "git.diff"
            atomic_write_text(run_dir / name, diff)
            state["diff_file"] = name
    manifest["git"] = state
    manifest["earlier_sessions"] = [_summary(session) for session in sessions]
    atomic_write_text(run_dir / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


def _summary(session: dict) -> dict:
    """An earlier session in brief: without its package list and its data's file listing."""
    brief = {key: value for key, value in session.items() if key != "packages"}
    data = brief.get("data") or {}
    brief["data"] = {key: value for key, value in data.items() if key not in ("listing", "folders")}
    return brief


def read_manifest(run_dir: Path) -> dict | None:
    """The manifest of the run in `run_dir`; None when it has none (a run begun before
    manifests were written) or it cannot be read (a warning says so: it is a record, and a
    damaged one must not stop the run)."""
    path = Path(run_dir) / MANIFEST
    try:
        manifest = read_small_json(path, MAX_MANIFEST_BYTES, "a manifest")
    except FileNotFoundError:
        return None
    # (OSError: not a regular file; ValueError: not UTF-8, not JSON, too large, too deep)
    except (OSError, ValueError) as error:
        problem = " ".join(str(error).split())[:200]
        logger.warning(
            "could not read %s (%s): the run's environment is not compared", path, problem
        )
        return None
    return manifest if isinstance(manifest, dict) else None


def compare_for_resume(saved: dict | None, current: dict) -> tuple[list[str], str | None]:
    """(warnings, data change) between the manifest of a run's last session and the
    current one (build_manifest): one warning when torch, CUDA, cuDNN or the device model
    differ, naming each old -> new; the data change in one line, or None when the data is
    unchanged or either side has no fingerprint (`saved` None: nothing to compare)."""
    if saved is None:
        return [], None
    changed = [
        f"{label} {_shown(saved.get(key))} -> {_shown(current.get(key))}"
        for key, label in NUMERICS.items()
        if saved.get(key) != current.get(key)
    ]
    warnings = []
    if changed:
        warnings.append(
            f"this run continues under another environment ({', '.join(changed)}): it is not "
            "promised to be bit-identical to a run that was never interrupted"
        )
    if not saved.get("data") or not current.get("data"):
        return warnings, None
    return warnings, describe_change(saved["data"], current["data"])


def check_resume(
    run_dir: Path, data_fingerprint: dict, device: torch.device, allow_changed_data: bool
) -> None:
    """Before a run continues: warn of another environment (compare_for_resume), and
    refuse changed data with ConfigError unless `allow_changed_data` (run.allow_changed_data)."""
    saved = read_manifest(run_dir)
    warnings, data_change = compare_for_resume(saved, build_manifest(data_fingerprint, device))
    for warning in warnings:
        logger.warning("%s", warning)
    if data_change and not allow_changed_data:
        raise ConfigError(
            f"{data_change}, since this run's last session; its checkpoints were trained on "
            "the data as it was: restore it, set run.allow_changed_data=true to continue on "
            "the changed data, or start a new run"
        )
    if data_change:
        logger.warning("run.allow_changed_data=true: continuing on changed data: %s", data_change)


def _shown(value) -> str:
    return "none" if value is None else str(value)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def installed_packages() -> dict[str, str]:
    """name -> version of every installed distribution, sorted by name."""
    packages = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if name and name not in packages:  # the first on sys.path is the one imported
            packages[name] = distribution.version
    return dict(sorted(packages.items(), key=lambda item: item[0].lower()))


def git_state(folder: Path, leave_out: Path | None = None) -> dict | None:
    """{"commit", "dirty", "diff"} of the git work tree holding `folder`, all of it but the
    folder `leave_out` (a run folder inside the project: its own files are no change to the
    code); None when git is missing, fails, times out, or `folder` is in no work tree.

    `commit` is None before the first commit; `diff` is "" for a clean tree, else the
    changes against the commit (staged or not), headed by the names of untracked files as
    comment lines (`git apply` skips them).
    """
    top = _git(folder, "rev-parse", "--show-toplevel")
    if top is None:
        return None
    top = Path(top.strip()).resolve()
    # From the top, so that names and untracked files cover the whole tree, not a sub-folder.
    paths = ["--", ":(top)"]
    if leave_out is not None and Path(leave_out).resolve().is_relative_to(top):
        paths.append(f":(top,exclude){Path(leave_out).resolve().relative_to(top).as_posix()}")
    commit = _git(top, "rev-parse", "--verify", "--quiet", "HEAD")
    status = _git(top, "status", "--porcelain", "--untracked-files=all", *paths)
    if status is None:
        return None
    diff = ""
    if status:
        untracked = _git(top, "ls-files", "--others", "--exclude-standard", *paths) or ""
        header = "".join(f"# untracked: {name}\n" for name in untracked.splitlines())
        changes = _git(top, "diff", "HEAD" if commit else "--cached", *paths)
        diff = header + (changes or "")
    return {"commit": commit.strip() if commit else None, "dirty": bool(status), "diff": diff}


def _git(folder: Path, *arguments: str) -> str | None:
    """The output of `git ARGUMENTS` run in `folder`; None if it fails in any way."""
    # GIT_OPTIONAL_LOCKS=0: `git status` must not take the index lock from the user's git.
    environment = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        result = subprocess.run(
            ["git", "-C", str(folder), *arguments],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=GIT_TIMEOUT_S,
            env=environment,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None
