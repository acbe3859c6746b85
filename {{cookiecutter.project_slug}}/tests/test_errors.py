"""Input and environment errors end in one line and an exit code at every entry point: a run
folder that cannot be written, a full disk, no network, a missing package, a second
Ctrl-C. A bug keeps its traceback."""

import errno
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path

import matplotlib.figure
import pytest
from conftest import PROJECT_ROOT
from PIL import Image

from {{ cookiecutter.package_name }}.errors import exit_code_of
from {{ cookiecutter.package_name }}.features import feature_module
from {{ cookiecutter.package_name }}.hooks import Hooks
from {{ cookiecutter.package_name }}.plots import plot_run
from {{ cookiecutter.package_name }}.runs import RunFolder, mark_run_folder
from {{ cookiecutter.package_name }}.train import run


def one_error_line(text: str) -> str:
    """The one `error: ` line of `text` (stderr, where log messages may come before it)."""
    assert "Traceback" not in text, text
    lines = text.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), text
    assert sum(line.startswith("error: ") for line in lines) == 1, text
    return lines[-1]


def test_a_run_folder_under_a_regular_file_is_one_line(make_config, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert run(make_config(run_dir=blocker / "run")) == 1
    line = one_error_line(capsys.readouterr().err)
    assert str(blocker / "run") in line and "a part of its path is a file" in line
    assert "point run.dir at a writable folder" in line


@pytest.mark.parametrize(
    "code, words",
    [(errno.EROFS, "read-only filesystem"), (errno.EACCES, "permission denied")],
)
def test_a_run_folder_that_cannot_be_written_is_one_line(
    make_config, tmp_path, capsys, monkeypatch, code, words
):
    # A read-only mount or a folder without write permission, as the kernel reports it. The
    # tests may run as root, whom chmod 0o555 does not stop, and mounting a read-only
    # filesystem needs privileges CI lacks: so os.mkdir raises the kernel's error here.
    run_dir = tmp_path / "readonly" / "run"
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if Path(path).is_relative_to(tmp_path / "readonly"):
            raise OSError(code, os.strerror(code), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    assert run(make_config(run_dir=run_dir)) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "readonly" in line and words in line and "point run.dir at a writable folder" in line


def write_half_then_fail(figure, path, **kwargs):
    """Figure.savefig on a disk that fills up halfway through the file."""
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_a_full_disk_while_drawing_the_plots_costs_one_warning(
    make_config, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", write_half_then_fail)
    assert run(make_config()) == 0  # the run itself is saved: its plots are a comfort
    run_dir = tmp_path / "run"
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if "WARNING" in line and "plots" in line]
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    assert f".plots {run_dir}" in warnings[0]  # how to draw them later
    assert "Traceback" not in out
    assert not list(run_dir.glob("*.png")) and not list(run_dir.glob(".*.tmp"))
    assert (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "metrics.csv").is_file()


@pytest.mark.slow
def test_a_full_disk_keeps_the_plots_drawn_before(make_config, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    assert run(make_config()) == 0
    before = {path.name: path.read_bytes() for path in run_dir.glob("*.png")}
    assert set(before) == {"loss.png", "accuracy.png", "lr.png"}
    drawn = plot_run(run_dir)  # what it wrote, for the run's "plots:" line
    assert [path.name for path in drawn] == ["loss.png", "accuracy.png", "lr.png"]
    before = {path.name: path.read_bytes() for path in run_dir.glob("*.png")}
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", write_half_then_fail)
    assert plot_run(run_dir) == []
    assert {path.name: path.read_bytes() for path in run_dir.glob("*.png")} == before
    assert not list(run_dir.glob(".*.tmp"))
    for name in before:
        with Image.open(run_dir / name) as image:
            image.verify()


def interrupt_at(step: int):
    """An after_step hook that acts as a second Ctrl-C (KeyboardInterrupt) at `step`."""

    def after_step(state) -> None:
        if state.global_step == step:
            raise KeyboardInterrupt

    return after_step


def test_a_second_ctrl_c_before_any_save_says_nothing_was_saved(make_config, tmp_path, capsys):
    assert run(make_config(), Hooks(after_step=interrupt_at(1))) == 130
    error = capsys.readouterr().err.strip()
    assert error.startswith("interrupted: no checkpoint was saved in ") and "\n" not in error
    assert str(tmp_path / "run") in error and "intact" not in error


def test_a_second_ctrl_c_names_the_checkpoint_that_is_left(make_config, tmp_path, capsys):
    cfg = make_config("run.save_every_steps=2")
    assert run(cfg, Hooks(after_step=interrupt_at(3))) == 130
    error = capsys.readouterr().err.strip()
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000002.pt"
    assert checkpoint.is_file()
    assert f"the newest checkpoint, {checkpoint}, is intact" in error
    assert f"python train.py run.resume={tmp_path / 'run'}" in error


def test_a_second_ctrl_c_in_a_new_default_folder(make_config, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(make_config("run.dir=null"), Hooks(after_step=interrupt_at(1))) == 130
    error = capsys.readouterr().err.strip()
    assert error == "interrupted: no checkpoint was saved yet, so there is nothing to continue from"


# torchvision raises the URLError itself (cifar10), or one RuntimeError after trying each of
# its mirrors (mnist).
@pytest.mark.parametrize("dataset", ["cifar10", "mnist"])
def test_no_network_for_a_download_is_one_line(make_config, tmp_path, capsys, monkeypatch, dataset):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    data = (f"data.dataset={dataset}", f"data.root={tmp_path / 'data'}", "data.download=true")
    assert run(make_config(*data)) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"downloading {dataset[:5]}" in line.lower() and "failed" in line
    assert "name resolution" in line and "network" in line


@pytest.mark.parametrize(
    "command",
    [
        ["train.py", "train.max_steps=1"],
        ["evaluate.py", "run.resume=runs/x"],
        ["predict.py", "runs/x", "images"],
        ["export.py", "runs/x/checkpoints/best.pt"],
    ],
)
def test_a_missing_package_names_the_install_command(run_python, command):
    """Each entry point where torch cannot be imported (as if it were not installed)."""
    script = (
        "import runpy, sys; sys.modules['torch'] = None; "
        f"sys.argv = {command!r}; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    result = run_python("-c", script)
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert "the package torch is not installed" in line and "pip install -e ." in line


@pytest.mark.parametrize(
    "error, code, words",
    [
        (ModuleNotFoundError("no optuna", name="optuna"), 1, "pip install optuna"),
        (OSError(errno.ENOSPC, "No space left on device", "out.csv"), 1, "free disk space"),
        (ConnectionResetError(104, "Connection reset by peer"), 1, "network connection failed"),
        # A broken pipe that is not stdout's (a tracker's connection): a network failure.
        (BrokenPipeError(errno.EPIPE, "Broken pipe"), 1, "network connection failed (Broken"),
        # torchvision's datasets with several mirrors gather their failures in one error.
        (
            RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried x, got:\nrefused"),
            1,
            "download failed (Error downloading train-images-idx3-ubyte.gz: refused)",
        ),
    ],
)
def test_exit_code_of_turns_known_errors_into_one_line(capsys, error, code, words):
    def fail() -> int:
        raise error

    assert exit_code_of(fail, fix="name another OUTPUT") == code
    assert words in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "bug",
    [ValueError("a bug"), KeyError("x"), ModuleNotFoundError("x", name="no_such_module")],
)
def test_a_bug_keeps_its_traceback(bug):
    def fail() -> int:
        raise bug

    with pytest.raises(type(bug)):
        exit_code_of(fail, fix="")


@pytest.mark.slow
def test_evaluate_shows_its_figures_when_the_run_folder_cannot_be_written(
    make_config, tmp_path, run_python
):
    assert run(make_config("train.max_steps=2")) == 0
    run_dir = tmp_path / "run"
    (run_dir / "eval").write_text("a file where evaluate.py writes its folder")
    result = run_python("evaluate.py", f"run.resume={run_dir}")
    assert result.returncode == 1
    assert "accuracy " in result.stdout  # the results, shown before the files failed
    line = one_error_line(result.stderr)
    assert str(run_dir / "eval") in line and "copy the run folder" in line


@pytest.mark.skipif(feature_module("sweep") is None, reason="this project has no sweeps")
def test_a_sweep_folder_under_a_regular_file_is_one_line(tmp_path, run_python):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_python(
        str(PROJECT_ROOT / "sweep.py"), "--trials", "1", "--dir", str(blocker / "sweep")
    )
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert str(blocker) in line and "--dir" in line


@pytest.mark.slow
@pytest.mark.skipif(
    not hasattr(signal, "SIGXFSZ"),
    reason="no file-size limit (RLIMIT_FSIZE) to stand for a full disk",
)
def test_a_train_log_that_cannot_grow_is_one_warning_and_training_goes_on(
    make_config, tmp_path, capfd
):
    """A write to train.log that fails, as on a full disk. train.log is a regular file of the
    run (a link in its place would be set aside, never written through) already as large as
    the process may write (RLIMIT_FSIZE), so every append to it fails (EFBIG) while the
    small checkpoints and records are written."""
    import resource

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    mark_run_folder(RunFolder(run_dir))  # a run folder of this project, whose log is full
    limit = 64 << 20
    with open(run_dir / "train.log", "wb") as log:
        log.truncate(limit)  # sparse: takes no disk
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not death by SIGXFSZ
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        assert run(make_config("train.epochs=2", run_dir=run_dir)) == 0
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    errors = capfd.readouterr().err
    assert "Logging error" not in errors and "Traceback" not in errors, errors[-2000:]
    warnings = [line for line in errors.splitlines() if "cannot write" in line]
    assert len(warnings) == 1 and "train.log" in warnings[0], errors[-2000:]
    assert (run_dir / "checkpoints" / "last.pt").exists()
