"""predict.py and evaluate.py take what export.py writes, and what people hand over as
weights; predict.py never overwrites earlier predictions unasked, and its messages fit it."""

import csv
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PROJECT_ROOT, SMALL_OVERRIDES, pipe_without_reader, wait_for_file, write_images

from {{ cookiecutter.package_name }}.checkpoint import CheckpointError, load_checkpoint, load_weights
from {{ cookiecutter.package_name }}.cli import DEFAULT_CONFIG
from {{ cookiecutter.package_name }}.config import load_config
from {{ cookiecutter.package_name }}.exported import export_weights, info_path
from {{ cookiecutter.package_name }}.features import has_feature
from {{ cookiecutter.package_name }}.files import file_record
from {{ cookiecutter.package_name }}.inference import load_trained
from {{ cookiecutter.package_name }}.train import main, run

CLASSES = {f"class{number:02d}": 4 for number in range(12)}  # more than ten classes
SETTINGS = ("data.dataset=imagefolder", "data.image_size=16", "data.batch_size=8")
# The formats export.py writes in this project (every project reads .pt and .safetensors),
# and its torch.export program.
EXPORT_SUFFIXES = (".pt", ".safetensors") if has_feature("safetensors_io") else (".pt",)
EXPORT_SUFFIXES += (".pt2",)
# ONNX, where the optional packages of `pip install -e .[export]` are installed.
HAS_ONNX = all(importlib.util.find_spec(name) for name in ("onnxscript", "onnxruntime"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(images, run folder, new images) of a one-epoch run on twelve classes."""
    root = tmp_path_factory.mktemp("predict")
    write_images(root / "images", CLASSES)
    run_dir = root / "run"
    settings = [*SMALL_OVERRIDES, *SETTINGS, f"data.root={root / 'images'}", f"run.dir={run_dir}"]
    assert main(load_config([DEFAULT_CONFIG], settings)) == 0
    new_images = root / "new"
    write_images(new_images, {"a": 2, "b": 2}, first=500)
    return root / "images", run_dir, new_images


def predictions_of(result) -> list[str]:
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


ONNX_CASE = pytest.param(
    ".onnx",
    marks=pytest.mark.skipif(not HAS_ONNX, reason="onnxscript or onnxruntime is not installed"),
)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [*EXPORT_SUFFIXES, ONNX_CASE])
def test_predict_and_evaluate_take_what_export_writes(trained, run_python, tmp_path, suffix):
    _, run_dir, new_images = trained
    checkpoint = run_dir / "checkpoints" / "last.pt"
    output = tmp_path / f"model{suffix}"
    exported = run_python("export.py", str(checkpoint), str(output))
    assert exported.returncode == 0, exported.stderr
    card = json.loads((tmp_path / f"model{suffix}.json").read_text(encoding="utf-8"))
    assert card["classes"] == list(CLASSES) and len(card["normalization"]["mean"]) == 3
    if suffix in (".pt2", ".onnx"):  # checked against the model on the validation images
        assert card["parity"]["images"] == 12 and card["parity"]["top1_agreement"] == 1
        assert card["parity"]["max_abs_logit_difference"] <= 1e-4
        assert "checked on 12 validation images" in exported.stdout
    expected = predictions_of(run_python("predict.py", str(checkpoint), str(new_images)))
    assert len(expected) == 4
    exported = run_python("predict.py", str(output), str(new_images), str(tmp_path / "p.csv"))
    assert predictions_of(exported) == expected
    evaluated = run_python("evaluate.py", str(output))
    assert evaluated.returncode == 0, evaluated.stderr
    from_checkpoint = run_python("evaluate.py", str(checkpoint))
    accuracy = [line for line in from_checkpoint.stdout.splitlines() if "accuracy" in line]
    assert accuracy and accuracy[0] in evaluated.stdout


@pytest.mark.slow
def test_an_exported_safetensors_file_works_alone(trained, run_python, tmp_path):
    """Its header holds the class names, normalisation and config: no .json needed."""
    if ".safetensors" not in EXPORT_SUFFIXES:
        pytest.skip("this project writes no safetensors (use_safetensors=no)")
    _, run_dir, new_images = trained
    output = tmp_path / "model.safetensors"
    checkpoint = run_dir / "checkpoints" / "last.pt"
    assert run_python("export.py", str(checkpoint), str(output)).returncode == 0
    (tmp_path / "model.safetensors.json").unlink()
    assert len(predictions_of(run_python("predict.py", str(output), str(new_images)))) == 4


@pytest.mark.slow
def test_bare_weights_are_named_as_such(trained, run_python, tmp_path):
    _, run_dir, new_images = trained
    weights = tmp_path / "weights.pt"
    torch.save(load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"], weights)
    result = run_python("predict.py", str(weights), str(new_images))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"error: {weights} holds model weights only, not a training checkpoint" in result.stderr


@pytest.mark.slow
def test_legacy_pth_weights_start_a_run(trained, make_config, tmp_path):
    """torch's format before 1.6 (not a zip archive), as older .pth files are."""
    images, run_dir, _ = trained
    weights = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    legacy = tmp_path / "old.pth"
    torch.save(weights, legacy, _use_new_zipfile_serialization=False)
    assert all(torch.equal(value, load_weights(legacy)[key]) for key, value in weights.items())
    settings = [*SETTINGS, f"data.root={images}", f"model.weights={legacy}", "train.max_steps=1"]
    assert run(make_config(*settings)) == 0


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "is empty (0 bytes)"),
        (b"<!DOCTYPE html><html><body>Sign in</body></html>", "is a web page"),
        (b"\x89HDF\r\n\x1a\n" + bytes(100), "is an HDF5 file"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n", "git lfs pull"),
        (b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94.", "a plain Python pickle"),
        (b"PK\x03\x04 cut short", "is truncated or corrupt"),
    ],
)
def test_a_weights_file_that_is_something_else_is_named(tmp_path, content, words):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as error:
        load_weights(path)
    assert str(error.value).startswith(f"{path} ") and words in str(error.value)


@pytest.mark.slow
def test_predict_keeps_earlier_predictions(trained, run_python, tmp_path):
    _, run_dir, new_images = trained
    for path in run_dir.glob("predictions*.csv"):  # from the tests above
        path.unlink()
    first = run_python("predict.py", str(run_dir), str(new_images))
    second = run_python("predict.py", str(run_dir), str(new_images))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    default, numbered = run_dir / "predictions.csv", run_dir / "predictions-2.csv"
    assert f"to {default}" in first.stderr and f"to {numbered}" in second.stderr
    assert default.read_bytes() == numbered.read_bytes()
    named = tmp_path / "mine.csv"
    named.write_bytes(default.read_bytes())  # predictions that predict.py wrote
    result = run_python("predict.py", str(run_dir), str(new_images), str(named))
    assert f"replacing the earlier {named}" in result.stderr
    with named.open(newline="", encoding="utf-8") as file:
        assert len(list(csv.DictReader(file))) == 4


@pytest.mark.slow
def test_predict_replaces_no_file_but_its_own_predictions(trained, run_python, tmp_path):
    _, run_dir, new_images = trained
    users = tmp_path / "table.csv"
    users.write_text("name,score\nalice,3\n")
    result = run_python("predict.py", str(run_dir), str(new_images), str(users))
    assert result.returncode == 2, result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"error: {users} exists and is not")
    assert users.read_text() == "name,score\nalice,3\n"


def one_error(result, code: int = 2) -> str:
    errors = result.stderr.strip().splitlines()
    assert result.returncode == code and len(errors) == 1, result.stderr
    assert errors[0].startswith("error: ") and "Traceback" not in result.stderr
    return errors[0]


def files_below(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    """A copy of the trained run folder, for a test to write into: without what other tests
    of this module wrote into the trained run (evaluations, exports, predictions), so that
    the copy is the same whatever ran before."""
    copy = tmp_path / "run"
    outputs = shutil.ignore_patterns("eval", "export", "predictions*.csv")
    shutil.copytree(trained[1], copy, symlinks=True, ignore=outputs)
    return copy


@pytest.mark.slow
def test_export_replaces_no_checkpoint_and_no_file_it_did_not_write(run_copy, run_python):
    checkpoints = run_copy / "checkpoints"
    checkpoint = checkpoints / "last.pt"
    before = files_below(checkpoints)
    users = run_copy.parent / "mine.pt"
    users.write_bytes(b"the user's own file")
    card_only = run_copy.parent / "other.pt"
    info_path(card_only).write_text("the user's own notes")
    for output in (checkpoint, checkpoints / "new.pt", users, card_only):
        line = one_error(run_python("export.py", str(checkpoint), str(output)))
        assert str(output) in line or str(info_path(output)) in line
    assert files_below(checkpoints) == before
    assert users.read_bytes() == b"the user's own file" and not card_only.exists()
    assert info_path(card_only).read_text() == "the user's own notes"

    ours = run_copy.parent / "model.pt"
    for _ in range(2):  # its own earlier export it may replace
        exported = run_python("export.py", str(checkpoint), str(ours))
        assert exported.returncode == 0, exported.stderr
    assert json.loads(info_path(ours).read_text(encoding="utf-8"))["checkpoint"]


@pytest.mark.slow
def test_export_replaces_no_file_put_in_place_of_its_output(run_copy, run_python):
    """A user's file in place of an earlier export, its card left beside it, is not the
    export's to replace; nor is an export whose card (from an export.py before cards kept
    the file's SHA-256) cannot tell. Such an older export still reads."""
    checkpoint = run_copy / "checkpoints" / "last.pt"
    replaced, older = run_copy.parent / "replaced.pt", run_copy.parent / "older.pt"
    for output in (replaced, older):
        export_weights(checkpoint, output)
    replaced.write_bytes(b"the user's own file")
    card = json.loads(info_path(older).read_text(encoding="utf-8"))
    del card["file"]
    info_path(older).write_text(json.dumps(card), encoding="utf-8")
    before = {path: path.read_bytes() for path in (replaced, older)}
    for output, words in ((replaced, "not the file its card"), (older, "no checksum")):
        line = one_error(run_python("export.py", str(checkpoint), str(output)))
        assert str(output) in line and words in line and "new OUTPUT" in line
    assert {path: path.read_bytes() for path in before} == before
    assert load_trained(older, ["train.device=cpu"]).classes == card["classes"]


def without_onnx(tmp_path: Path, subprocess_env: dict) -> dict:
    """An environment in which ONNX export is unavailable (onnxscript cannot be imported),
    whatever is installed."""
    site = tmp_path / "no-onnx"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['onnxscript'] = None\n")
    paths = [str(site), *filter(None, [subprocess_env.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(paths)}


@pytest.mark.slow
def test_an_export_folder_keeps_files_it_did_not_write(
    run_copy, run_python, subprocess_env, tmp_path
):
    folder = run_copy / "export"
    folder.mkdir()
    (folder / "notes.txt").write_text("the user's own notes")
    line = one_error(run_python("export.py", str(run_copy)))
    assert str(folder) in line
    assert files_below(folder) == {"notes.txt": b"the user's own notes"}

    # A format skipped (ONNX unavailable) leaves its name free: the user's file of that
    # name is neither replaced nor removed by the next export.
    (folder / "notes.txt").unlink()
    env = without_onnx(tmp_path, subprocess_env)
    assert run_python("export.py", str(run_copy), env=env).returncode == 0
    (folder / "notes.txt").write_text("the user's own notes")
    summary = json.loads((folder / "export.json").read_text())
    assert "skipped" in summary["files"]["model.onnx"]
    (folder / "model.onnx").write_text("mine")
    again = run_python("export.py", str(run_copy), env=env)
    assert again.returncode == 0, again.stderr
    assert (folder / "model.onnx").read_text() == "mine"
    assert "model.onnx" not in json.loads((folder / "export.json").read_text())["written"]

    # An earlier export's file that this one does not make goes only while it is as written;
    # one changed since stays, and one this export would replace is refused.
    summary = json.loads((folder / "export.json").read_text())
    (folder / "model.old").write_text("an earlier export's file")
    (folder / "model.kept").write_text("an earlier export's file")
    summary["written"]["model.old"] = file_record(folder / "model.old")
    summary["written"]["model.kept"] = file_record(folder / "model.kept")
    (folder / "model.kept").write_text("changed by the user since")
    (folder / "export.json").write_text(json.dumps(summary))
    exported = run_python("export.py", str(run_copy), env=env)
    assert exported.returncode == 0, exported.stderr
    names = {path.name for path in folder.iterdir()}
    assert {"notes.txt", "model.pt2", "export.json", "model.onnx", "model.kept"} <= names
    assert "model.old" not in names
    assert not [name for name in names if name.startswith(".")], names

    (folder / "model.pt2").write_bytes(b"the user's own program")
    before = files_below(folder)
    line = one_error(run_python("export.py", str(run_copy), env=env))
    assert str(folder / "model.pt2") in line
    assert files_below(folder) == before


@pytest.mark.slow
def test_export_writes_nothing_into_checkpoints_through_a_link(run_copy, run_python, tmp_path):
    checkpoints = run_copy / "checkpoints"
    before = files_below(checkpoints)
    link = tmp_path / "ck"
    link.symlink_to(checkpoints, target_is_directory=True)
    line = one_error(
        run_python("export.py", str(checkpoints / "best.pt"), str(link / "step-00000099.pt"))
    )
    assert str(checkpoints) in line
    (run_copy / "export").symlink_to(checkpoints, target_is_directory=True)
    line = one_error(run_python("export.py", str(run_copy)))
    assert "checkpoints" in line
    assert files_below(checkpoints) == before

    # OUTPUT a link (to a checkpoint, or to any file): the link is the user's, not replaced.
    (tmp_path / "mine.pt").write_bytes(b"the user's own file")
    for target in (checkpoints / "last.pt", tmp_path / "mine.pt"):
        output = tmp_path / f"to-{target.name}"
        output.symlink_to(target)
        line = one_error(run_python("export.py", str(checkpoints / "best.pt"), str(output)))
        assert str(output) in line and output.is_symlink()
    assert files_below(checkpoints) == before
    assert (tmp_path / "mine.pt").read_bytes() == b"the user's own file"


@pytest.mark.slow
def test_predict_keeps_a_link_where_its_default_output_would_go(trained, run_copy, run_python):
    default = run_copy / "predictions.csv"
    default.symlink_to(run_copy / "missing.csv")  # a link that leads nowhere, still the user's
    result = run_python("predict.py", str(run_copy), str(trained[2]))
    assert result.returncode == 0, result.stderr
    assert f"to {run_copy / 'predictions-2.csv'}" in result.stderr
    assert default.is_symlink() and not (run_copy / "missing.csv").exists()


@pytest.mark.slow
def test_evaluate_on_other_data_writes_beside_the_first_evaluation(trained, run_copy, run_python):
    other = run_copy.parent / "other"
    write_images(other, CLASSES, first=700)
    first = run_python("evaluate.py", str(run_copy))
    assert first.returncode == 0, first.stderr
    own = run_copy / "eval" / "best"  # a run folder: its best.pt
    before = files_below(own)
    assert json.loads(before["data.json"])["overrides"] == []

    again = run_python("evaluate.py", str(run_copy), f"data.root={other}", "data.num_workers=0")
    assert again.returncode == 0, again.stderr
    assert files_below(own) == before
    (beside,) = [path for path in (run_copy / "eval").iterdir() if path != own]
    assert beside.name.startswith("best-on-other-") and f"wrote {beside}" in again.stdout
    assert "written beside" in again.stdout and f"data.root={other}" in again.stdout
    assert json.loads((beside / "data.json").read_text())["data"]["data.root"] == str(other)

    same = run_python("evaluate.py", str(run_copy), "data.num_workers=0")  # the run's own data
    assert same.returncode == 0 and f"wrote {own / 'metrics.json'}" in same.stdout
    assert len(list((run_copy / "eval").iterdir())) == 2


@pytest.mark.slow
def test_evaluate_writes_no_folder_of_other_files(run_copy, run_python):
    folder = run_copy / "eval" / "best"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text('{"mine": 1}')
    line = one_error(run_python("evaluate.py", str(run_copy)))
    assert str(folder) in line
    assert files_below(folder) == {"metrics.json": b'{"mine": 1}'}


@pytest.mark.slow
def test_evaluate_replaces_only_the_files_it_wrote_as_it_wrote_them(run_copy, run_python):
    assert run_python("evaluate.py", str(run_copy)).returncode == 0
    folder = run_copy / "eval" / "best"
    (folder / "per_class.csv").write_text("the user's own table")
    before = files_below(folder)
    line = one_error(run_python("evaluate.py", str(run_copy)))
    assert str(folder / "per_class.csv") in line
    assert files_below(folder) == before

    # An evaluation that kept no record of its files (data.json gone): none is replaced.
    (folder / "per_class.csv").unlink()
    (folder / "data.json").unlink()
    before = files_below(folder)
    line = one_error(run_python("evaluate.py", str(run_copy)))
    assert str(folder) in line
    assert files_below(folder) == before

    link = folder.parent / "linked.csv"  # a predictions OUTPUT that is a link stays a link
    (folder.parent / "earlier.csv").write_text("file,class,probability,top\n")
    link.symlink_to(folder.parent / "earlier.csv")
    images = run_copy.parent / "few"
    write_images(images, {"a": 1}, first=900)
    line = one_error(run_python("predict.py", str(run_copy), str(images), str(link)))
    assert str(link) in line and link.is_symlink()


# Runs an entry point with one of its functions wrapped: the function does its work, then
# the command waits inside the window where its files are half made, until a signal comes.
WAIT_IN_THE_WINDOW = """
import runpy, signal, sys
from pathlib import Path
import {{ cookiecutter.package_name }}.{module} as module
original = module.{function}
def then_wait(*args, **kwargs):
    original(*args, **kwargs)
    Path({ready!r}).write_text("in the window")
    while True:
        signal.pause()
module.{function} = then_wait
sys.argv = {argv!r}
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def signal_in_the_window(
    tmp_path, env, signum, module: str, function: str, argv: list[str]
) -> subprocess.CompletedProcess:
    ready = tmp_path / "in-the-window"
    script = WAIT_IN_THE_WINDOW.format(
        module=module, function=function, ready=str(ready), argv=argv
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_file(ready, process, timeout=600)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_export_leaves_no_file(
    run_copy, subprocess_env, tmp_path, signum, sighup_at_its_default
):
    argv = ["export.py", str(run_copy)]
    result = signal_in_the_window(
        tmp_path, subprocess_env, signum, "export_program", "write_program", argv
    )
    assert result.returncode == 128 + signum, result.stderr
    name = signal.Signals(signum).name
    assert result.stderr.strip().splitlines() == [f"stopped by {name}: nothing was written"]
    assert not (run_copy / "export").exists()


@pytest.mark.slow
def test_ctrl_c_during_evaluate_keeps_the_earlier_evaluation_whole(
    run_copy, run_python, subprocess_env, tmp_path
):
    assert run_python("evaluate.py", str(run_copy)).returncode == 0
    folder = run_copy / "eval" / "best"
    before = files_below(folder)
    argv = ["evaluate.py", str(run_copy)]
    result = signal_in_the_window(
        tmp_path, subprocess_env, signal.SIGINT, "inference", "write_evaluation", argv
    )
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "stopped by SIGINT: nothing was written"
    assert files_below(folder) == before
    assert {path.name for path in folder.iterdir()} == set(before)  # no staging folder left


@pytest.mark.slow
def test_a_reader_that_stops_early_costs_no_file_and_no_traceback(trained, run_python, tmp_path):
    """`python predict.py ... | head -1` and `python evaluate.py ... | head -1`: the reader
    of stdout goes away; the files are written whole all the same, without a traceback."""
    _, run_dir, new_images = trained
    output = tmp_path / "all.csv"
    unbuffered = {"PYTHONUNBUFFERED": "1"}  # the first line printed meets the closed pipe
    with pipe_without_reader() as stdout:
        arguments = [str(run_dir), str(new_images), str(output)]
        result = run_python("predict.py", *arguments, stdout=stdout, env=unbuffered)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == f"wrote 4 predictions to {output}"
    with output.open(newline="", encoding="utf-8") as file:
        assert len(list(csv.DictReader(file))) == 4
    figures = run_dir / "eval" / "best" / "metrics.json"
    figures.unlink(missing_ok=True)
    with pipe_without_reader() as stdout:
        result = run_python("evaluate.py", str(run_dir), stdout=stdout, env=unbuffered)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "error" not in result.stderr, result.stderr
    assert json.loads(figures.read_text(encoding="utf-8"))["images"] > 0
    # export.py prints its lines at the end: the reader's absence shows when they are flushed,
    # after the files are written; the command ends quietly all the same.
    weights = tmp_path / "weights.pt"
    with pipe_without_reader() as stdout:
        result = run_python("export.py", str(run_dir), str(weights), stdout=stdout)
    assert result.returncode == 0 and not result.stderr, result.stderr
    assert weights.is_file()


@pytest.mark.slow
def test_predict_skips_an_unreadable_file_without_training_advice(trained, run_python):
    _, run_dir, new_images = trained
    broken = new_images / "a" / "broken.png"
    broken.write_bytes(b"not an image")
    try:
        result = run_python("predict.py", str(run_dir), str(new_images), str(run_dir / "x.csv"))
    finally:
        broken.unlink()
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "broken.png" in line]
    assert len(warning) == 1 and "is not a readable image" in warning[0]
    assert "skip_bad" not in result.stderr


@pytest.mark.slow
def test_evaluate_names_every_class_that_differs(trained, run_python, tmp_path):
    _, run_dir, _ = trained
    other = {**{name: 4 for name in list(CLASSES)[:11]}, "newcomer": 4}
    write_images(tmp_path / "other", other)
    result = run_python("evaluate.py", str(run_dir), f"data.root={tmp_path / 'other'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "missing from the data: class11" in line and "not in the checkpoint: newcomer" in line


@pytest.mark.slow
def test_a_program_that_drifts_from_the_model_is_refused(trained, tmp_path, monkeypatch):
    """A torch.export program whose logits differ from the model's (simulated by shifting
    the logits of the program read back) fails the export and leaves no file."""
    from {{ cookiecutter.package_name }} import export_program

    _, run_dir, _ = trained
    read_back = export_program.load_program

    def drifting(path):
        program = read_back(path)
        return lambda images: program(images) + torch.linspace(0, 0.1, len(CLASSES))

    monkeypatch.setattr(export_program, "load_program", drifting)
    output = tmp_path / "model.pt2"
    with pytest.raises(CheckpointError) as error:
        export_program.export_program(run_dir / "checkpoints" / "last.pt", output)
    message = str(error.value)
    assert "differs from the model on 12 validation images" in message and ".pt" in message
    assert not output.exists() and not (tmp_path / "model.pt2.json").exists()


@pytest.mark.slow
def test_onnx_without_its_packages_names_the_install_command(trained, run_python, tmp_path):
    _, run_dir, _ = trained
    script = (
        "import runpy, sys; sys.modules['onnxscript'] = sys.modules['onnxruntime'] = None; "
        f"sys.argv = ['export.py', {str(run_dir / 'checkpoints' / 'last.pt')!r}, "
        f"{str(tmp_path / 'model.onnx')!r}]; runpy.run_path('export.py', run_name='__main__')"
    )
    result = run_python("-c", script)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: the package onnx") and 'pip install -e ".[export]"' in line
    assert not (tmp_path / "model.onnx").exists()
