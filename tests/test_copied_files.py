"""Files that cookiecutter copies as they are (`_copy_without_render`): the picture of the
built-in samples, in sync with the generator, and a stray ruff cache in the template."""

import importlib.util
import shutil
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter
from PIL import Image

from tests.conftest import DEFAULT, TEMPLATE, run_python

PROJECT_TEMPLATE = TEMPLATE / "{{cookiecutter.project_slug}}"
SAMPLES = PROJECT_TEMPLATE / "docs" / "samples.png"


def _shape_classes() -> tuple[str, ...]:
    """SHAPE_CLASSES of the template's shapes.py (a module without Jinja)."""
    path = PROJECT_TEMPLATE / "{{cookiecutter.package_name}}" / "shapes.py"
    spec = importlib.util.spec_from_file_location("template_shapes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SHAPE_CLASSES


def test_the_samples_picture_is_what_the_generator_draws(baked, tmp_path):
    result = baked(DEFAULT)
    assert result.exit_code == 0, result.exception
    project = Path(result.project_path)
    assert (project / "docs" / "samples.png").read_bytes() == SAMPLES.read_bytes()
    assert "![" in (project / "README.md").read_text(encoding="utf-8")
    assert "(docs/samples.png)" in (project / "README.md").read_text(encoding="utf-8")

    drawn = tmp_path / "drawn.png"
    process = run_python(["scripts/draw_samples.py", str(drawn)], cwd=project)
    assert process.returncode == 0, process.stderr
    with Image.open(SAMPLES) as committed, Image.open(drawn) as fresh:
        assert committed.format == "PNG" and committed.mode == "RGB"
        # A row of 64-pixel tiles (32x32 images, zoom 2) and 4-pixel gaps for every class.
        assert committed.size == (100 + 6 * 68, len(_shape_classes()) * 68 + 4)
        assert fresh.size == committed.size
        assert fresh.tobytes() == committed.tobytes(), (
            "docs/samples.png is out of date: run python scripts/draw_samples.py in a baked "
            "project and copy docs/samples.png into the template"
        )


def test_the_images_for_predict_are_what_the_generator_draws(baked, tmp_path):
    project = Path(baked(DEFAULT).project_path)
    shipped = sorted((TEMPLATE / "{{cookiecutter.project_slug}}" / "samples").iterdir())
    assert [path.name for path in shipped] == sorted(f"{name}.png" for name in _shape_classes())
    for path in shipped:  # copied as they are (*.png in _copy_without_render)
        assert (project / "samples" / path.name).read_bytes() == path.read_bytes()

    drawn = tmp_path / "drawn"
    process = run_python(["scripts/draw_samples.py", "--images", str(drawn)], cwd=project)
    assert process.returncode == 0, process.stderr
    assert sorted(path.name for path in drawn.iterdir()) == [path.name for path in shipped]
    for path in shipped:
        with Image.open(path) as committed, Image.open(drawn / path.name) as fresh:
            assert committed.format == "PNG" and committed.size == (32, 32)
            assert fresh.tobytes() == committed.tobytes(), (
                f"samples/{path.name} is out of date: run python scripts/draw_samples.py "
                "--images in a baked project and copy samples/ into the template"
            )


def test_the_generator_refuses_extra_arguments_in_one_line(baked):
    project = Path(baked(DEFAULT).project_path)
    process = run_python(["scripts/draw_samples.py", "a.png", "b.png"], cwd=project)
    assert process.returncode == 2
    assert process.stderr.startswith("error: too many arguments;")
    assert len(process.stderr.strip().splitlines()) == 1
    assert not (project / "a.png").exists()


@pytest.mark.parametrize(
    ("argv", "code", "start"),
    [
        (["--help"], 0, "usage: python scripts/draw_samples.py [OUTPUT.png]"),
        (["-h"], 0, "usage: python scripts/draw_samples.py [OUTPUT.png]"),
        (["--size=64"], 2, "error: unknown option '--size=64';"),
        (["picture"], 2, "error: 'picture' does not end in .png;"),
        (["--images", "a", "b"], 2, "error: --images takes one FOLDER at most;"),
    ],
)
def test_the_generator_answers_help_and_bad_arguments_in_one_line(baked, argv, code, start):
    # --help was a traceback (PIL: unknown file extension).
    project = Path(baked(DEFAULT).project_path)
    process = run_python(["scripts/draw_samples.py", *argv], cwd=project)
    assert process.returncode == code, process.stderr
    out = process.stdout if code == 0 else process.stderr
    assert out.startswith(start), out
    assert "Traceback" not in process.stderr
    if code == 2:
        assert len(process.stderr.strip().splitlines()) == 1


def test_the_generator_names_an_output_it_cannot_write_in_one_line(baked, tmp_path):
    # The blocking file goes in tmp_path: the bake is shared, and a file left in it made the
    # copier comparison of the same answers fail.
    project = Path(baked(DEFAULT).project_path)
    taken = tmp_path / "taken"
    taken.write_text("a file, not a folder", encoding="utf-8")
    output = taken / "samples.png"
    process = run_python(["scripts/draw_samples.py", str(output)], cwd=project)
    assert process.returncode == 1
    assert process.stderr.startswith(f"error: cannot write {output} (")
    assert len(process.stderr.strip().splitlines()) == 1


def test_a_stray_ruff_cache_in_the_template_does_not_break_a_bake(tmp_path):
    """`ruff` run inside the template folder without --no-cache leaves .ruff_cache there:
    files of paths and binary data that must not be rendered as templates."""
    template = tmp_path / "template"
    template.mkdir()
    shutil.copy(TEMPLATE / "cookiecutter.json", template)
    shutil.copytree(TEMPLATE / "hooks", template / "hooks")
    shutil.copytree(PROJECT_TEMPLATE, template / PROJECT_TEMPLATE.name)
    caches = [
        template / PROJECT_TEMPLATE.name / ".ruff_cache",
        template / PROJECT_TEMPLATE.name / "{{cookiecutter.package_name}}" / ".ruff_cache",
    ]
    contents = {
        "CACHEDIR.TAG": b"Signature: 8a477f597d28d172789f06886806bc55",
        "0.17.6/1234": b"{{cookiecutter.package_name}}/train.py {{ not_a_variable }} {% if",
        "0.17.6/5678": b"\x00\xff\xfe{%\x80 binary",
    }
    for cache in caches:
        for name, data in contents.items():
            (cache / name).parent.mkdir(parents=True, exist_ok=True)
            (cache / name).write_bytes(data)

    project = Path(cookiecutter(str(template), no_input=True, output_dir=str(tmp_path / "out")))
    assert (project / "train.py").is_file()
    for cache in (project / ".ruff_cache", project / "shape_classifier" / ".ruff_cache"):
        for name, data in contents.items():
            assert (cache / name).read_bytes() == data, f"{cache / name} was rendered"


def test_no_template_file_names_the_default_package():
    """The default answers bake `shape_classifier`: a template file that writes that name
    instead of `{{ cookiecutter.package_name }}` breaks every project named otherwise, and
    the default bakes the tests run would not notice."""
    named = [
        path.relative_to(PROJECT_TEMPLATE).as_posix()
        for path in PROJECT_TEMPLATE.rglob("*")
        if path.is_file()
        and ".ruff_cache" not in path.parts
        and path.suffix not in (".png", ".pyc")
        and "shape_classifier" in path.read_text(encoding="utf-8")
    ]
    assert not named, f"these template files name the default package: {named}"
