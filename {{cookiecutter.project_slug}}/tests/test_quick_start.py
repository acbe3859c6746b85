"""The README's Quick start works as written: train, then predict on the shipped samples/."""

import re
import shlex
import shutil
import subprocess
import sys

from conftest import PROJECT_ROOT, SMALL_OVERRIDES, _subprocess_env

from {{ cookiecutter.package_name }}.shapes import SHAPE_CLASSES


def quick_start_commands() -> list[str]:
    """The commands of the README's first code block, in the Quick start section."""
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def python(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_predict_as_the_quick_start_says_runs_on_the_shipped_samples(tmp_path):
    commands = quick_start_commands()
    predict = [command for command in commands if command.startswith("python predict.py")]
    assert len(predict) == 1, commands
    assert "python train.py" in commands
    samples = sorted(path.name for path in (PROJECT_ROOT / "samples").iterdir())
    assert samples == sorted(f"{name}.png" for name in SHAPE_CLASSES)

    # The train command of the Quick start, made small; then its predict command as written,
    # from a folder that holds the run and the samples as the project's does.
    trained = python(
        str(PROJECT_ROOT / "train.py"), *SMALL_OVERRIDES, "train.epochs=1", cwd=tmp_path
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    shutil.copytree(PROJECT_ROOT / "samples", tmp_path / "samples")
    argv = shlex.split(predict[0])[1:]
    result = python(str(PROJECT_ROOT / argv[0]), *argv[1:], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = [line for line in result.stdout.splitlines() if ".png" in line]
    assert len(printed) == len(SHAPE_CLASSES), result.stdout
    for line in printed:
        assert any(name in line.split(".png", 1)[1] for name in SHAPE_CLASSES), line
    assert (tmp_path / "runs" / "latest" / "predictions.csv").is_file()
