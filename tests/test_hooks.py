"""Tests of hooks/pre_gen_project.py and hooks/post_gen_project.py.

Bakes go through pytest-cookies (or cookiecutter itself) so the hooks run exactly as for a
user: rendered by Jinja, then run as a subprocess, whose output capfd sees on the real fds.
The importable functions are tested directly as well (``pythonpath = ["."]`` in pyproject).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from cookiecutter.exceptions import FailedHookException
from cookiecutter.main import cookiecutter

from hooks import post_gen_project, pre_gen_project
from tests.conftest import ALL_FEATURES
from tests.conftest import FEATURES as ANSWERS

# Not a plain import: isort groups tomllib by the configured target version (stdlib from 3.11).
tomllib = pytest.importorskip("tomllib")

REPO_ROOT = Path(__file__).resolve().parents[1]
VALID_NAMES = {"project_slug": "demo_project", "package_name": "demo_pkg"}

# (bad value, word naming the problem in the message)
REJECTED_NAMES = [
    ("my-project", "identifier"),
    ("1abc", "identifier"),
    ("My_Project", "lowercase"),
    ("class", "keyword"),
    ("import", "keyword"),
    ("test", "standard-library"),
    ("logging", "standard-library"),
    ("typing", "standard-library"),
    ("torch", "shadow"),
    ("torchvision", "shadow"),
    ("numpy", "shadow"),
]


def bake(cookies, **context):
    """Bake this template with the valid names plus ``context``; check no key was dropped."""
    extra_context = {**VALID_NAMES, **context}
    result = cookies.bake(extra_context=extra_context, template=str(REPO_ROOT))
    if result.context is not None:
        for key, value in context.items():
            assert result.context[key] == value, f"extra_context key {key!r} was not applied"
    return result


def baked_entries(tmpdir) -> list[Path]:
    """Everything the cookies fixture's bakes left in their output folders."""
    cookies_root = Path(str(tmpdir)) / "cookies"
    bake_dirs = list(cookies_root.iterdir())
    assert bake_dirs, f"no bake output folder under {cookies_root}"
    return [entry for bake_dir in bake_dirs for entry in bake_dir.iterdir()]


@pytest.fixture(scope="session")
def user_config(tmp_path_factory) -> str:
    """A cookiecutter user config that keeps clones and replays out of the home folder."""
    root = tmp_path_factory.mktemp("cookiecutter_user")
    config = root / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "cookiecutters_dir": str(root / "cookiecutters"),
                "replay_dir": str(root / "replay"),
            }
        ),
        encoding="utf-8",
    )
    return str(config)


# --------------------------------------------------------------------------------------------
# pre_gen_project: rejections through a real bake
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["project_slug", "package_name"])
@pytest.mark.parametrize(("value", "problem"), REJECTED_NAMES)
def test_bad_name_is_rejected_before_anything_is_written(
    cookies, tmpdir, capfd, key, value, problem
):
    result = bake(cookies, **{key: value})

    assert result.exit_code != 0
    assert isinstance(result.exception, FailedHookException)
    assert result.project_path is None
    err = capfd.readouterr().err
    assert f"ERROR: {key} {value!r}" in err
    assert problem in err
    assert "Traceback" not in err
    assert baked_entries(tmpdir) == []


def test_empty_package_name_is_rejected(cookies, tmpdir, capfd):
    result = bake(cookies, package_name="")

    assert result.exit_code != 0
    assert isinstance(result.exception, FailedHookException)
    err = capfd.readouterr().err
    assert "ERROR: package_name is empty" in err
    assert baked_entries(tmpdir) == []


def test_empty_project_slug_fails_without_leaving_anything(cookies, tmpdir):
    # An empty slug names the output folder itself, so cookiecutter refuses it ("already
    # exists") before the pre_gen hook can run; the hook's own message is unit-tested below.
    result = bake(cookies, project_slug="", package_name="")

    assert result.exit_code != 0
    assert result.exception is not None
    assert baked_entries(tmpdir) == []


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("project_slug", 'bad"""slug\\'),
        ("package_name", "pkg'''\"\"\"\\\nname"),
        ("package_name", 'r"""\n\\u0022 end'),
    ],
)
def test_hostile_bad_name_gives_a_clean_message(cookies, tmpdir, capfd, key, value):
    # Quotes, backslashes and newlines must reach the hook intact (tojson in a raw string).
    result = bake(cookies, **{key: value})

    assert isinstance(result.exception, FailedHookException)
    err = capfd.readouterr().err
    assert f"ERROR: {key} {value!r} is not a lowercase Python identifier" in err
    assert "Traceback" not in err
    assert baked_entries(tmpdir) == []


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"project_slug": "torch", "package_name": "demo_pkg"}, "project_slug 'torch'"),
        ({"project_slug": "demo_project", "package_name": "logging"}, "package_name 'logging'"),
        ({"project_slug": "my-project", "package_name": "demo_pkg"}, "project_slug 'my-project'"),
        ({"project_slug": "class"}, "project_slug (and package_name) 'class'"),
    ],
)
def test_rejection_leaves_output_dir_empty(tmp_path, user_config, capfd, context, message):
    output_dir = tmp_path / "out"
    output_dir.mkdir()

    with pytest.raises(FailedHookException):
        cookiecutter(
            str(REPO_ROOT),
            no_input=True,
            extra_context=context,
            output_dir=str(output_dir),
            config_file=user_config,
        )

    assert f"ERROR: {message}" in capfd.readouterr().err
    assert list(output_dir.iterdir()) == []


def test_valid_bake_lands_where_rejections_are_checked(cookies, tmpdir):
    # Control for the "nothing left" assertions: a good bake does leave its folder there.
    result = bake(cookies)

    assert result.exception is None, result.exception
    assert [entry.name for entry in baked_entries(tmpdir)] == [VALID_NAMES["project_slug"]]
    assert result.project_path.name == VALID_NAMES["project_slug"]


# --------------------------------------------------------------------------------------------
# pre_gen_project: importable functions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "My-Project",
            "ERROR: project_slug 'My-Project' is not a lowercase Python identifier (letters, "
            "digits and underscores, not starting with a digit); try 'my_project'.",
        ),
        ("1abc", "try 'project_1abc'."),
        ("My_Project", "try 'my_project'."),
        ("my project!", "try 'my_project'."),
        ("Ünïcode", "try 'unicode'."),
        ("---", "try 'my_project'."),
        (
            "",
            "ERROR: project_slug is empty; it must be a lowercase Python identifier (letters, "
            "digits and underscores, not starting with a digit), e.g. 'my_project'.",
        ),
        (
            "class",
            "ERROR: project_slug 'class' is a Python keyword and cannot be imported; choose "
            "another name, e.g. 'class_project'.",
        ),
        ("import", "e.g. 'import_project'."),
        (
            "test",
            "ERROR: project_slug 'test' would shadow the standard-library module 'test'; choose "
            "another name, e.g. 'test_project'.",
        ),
        ("logging", "standard-library module 'logging'; choose another name, e.g. 'logging_"),
        ("typing", "e.g. 'typing_project'."),
        (
            "torch",
            "ERROR: project_slug 'torch' would shadow the installed package 'torch'; choose "
            "another name, e.g. 'torch_project'.",
        ),
        ("torchvision", "installed package 'torchvision'"),
        ("numpy", "e.g. 'numpy_project'."),
        ("pil", "installed package 'PIL'"),
        ("Torch", "try 'torch_project'."),
    ],
)
def test_validate_identifier_message(value, expected):
    message = pre_gen_project.validate_identifier("project_slug", value)

    assert message is not None
    assert message.startswith("ERROR: project_slug ")
    assert "\n" not in message
    assert expected in message


@pytest.mark.parametrize(
    "name",
    [
        "torch",
        "torchvision",
        "numpy",
        "omegaconf",
        "yaml",
        "safetensors",
        "tensorboard",
        "tqdm",
        "matplotlib",
        "PIL",
        "pytest",
        "setuptools",
        "pip",
        "ruff",
        "optuna",
        "lightning",
        "pytorch_lightning",
        "triton",
        "cookiecutter",
        "jinja2",
    ],
)
def test_dependencies_are_refused(name):
    assert pre_gen_project.validate_identifier("package_name", name.lower()) is not None


@pytest.mark.parametrize(
    "value", ["shape_classifier", "my_project", "_private", "net2", "match", "case", "type"]
)
def test_valid_names_pass(value):
    assert pre_gen_project.validate_identifier("package_name", value) is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "My Project",
        "1abc",
        "9",
        "class",
        "test",
        "logging",
        "torch",
        "Ünïcode Näme 🚀",
        "__future__",
        'a"""b\\',
        "yaml-",
    ],
)
def test_suggested_name_is_itself_valid(value):
    suggestion = pre_gen_project.suggest_name(value)

    assert pre_gen_project.validate_identifier("package_name", suggestion) is None


def test_validate_reports_each_answer_once():
    assert pre_gen_project.validate("demo_project", "demo_pkg") == []
    assert len(pre_gen_project.validate("torch", "numpy")) == 2
    (message,) = pre_gen_project.validate("torch", "torch")
    assert message.startswith("ERROR: project_slug (and package_name) 'torch' would shadow")


def test_main_prints_to_stderr_and_returns_status(capsys):
    assert pre_gen_project.main("demo_project", "demo_pkg") == 0
    assert capsys.readouterr().err == ""

    assert pre_gen_project.main("demo_project", "logging") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("ERROR: package_name 'logging' would shadow")


# --------------------------------------------------------------------------------------------
# post_gen_project: feature files through a real bake
# --------------------------------------------------------------------------------------------

FEATURE_FILES = post_gen_project.FEATURE_FILES


def entry_id(answers: dict) -> str:
    return "+".join(key if value is True else f"{key}={value}" for key, value in answers.items())


def off_value(key: str, on):
    """The answer that turns `key` off: the other value of the bake matrix."""
    return next(value for value in ANSWERS[key] if value != on)


# (an entry's answers, one of them, its files): turning any one answer off drops the files.
TURNED_OFF = [
    pytest.param(answers, key, files, id=f"{entry_id(answers)}-without-{key}")
    for answers, files in FEATURE_FILES
    for key in answers
]
TURNED_ON = [pytest.param(answers, files, id=entry_id(answers)) for answers, files in FEATURE_FILES]


def owned_paths(project: Path, files: list[str]) -> list[Path]:
    return [project / name.replace("{package}", VALID_NAMES["package_name"]) for name in files]


@pytest.mark.parametrize(("answers", "key", "files"), TURNED_OFF)
def test_feature_files_absent_when_off(cookies, answers, key, files):
    off = off_value(key, answers[key])
    result = bake(cookies, **{**ALL_FEATURES, key: off})

    assert result.exception is None, result.exception
    for path in owned_paths(result.project_path, files):
        assert not path.exists(), f"{path.name} should be deleted when {key}={off!r}"
    if key == "ci":
        assert not (result.project_path / ".github").exists(), "an empty .github/ was left"


@pytest.mark.parametrize(("answers", "files"), TURNED_ON)
def test_feature_files_present_when_on(cookies, answers, files):
    all_off = {key: off_value(key, on) for key, on in ALL_FEATURES.items()}
    result = bake(cookies, **{**all_off, **answers})

    assert result.exception is None, result.exception
    for path in owned_paths(result.project_path, files):
        assert path.is_file(), f"{path.name} should be kept when {entry_id(answers)}"


def test_feature_table_names_template_files_once():
    project = REPO_ROOT / "{{cookiecutter.project_slug}}"
    names = [name for _, files in FEATURE_FILES for name in files]
    assert len(names) == len(set(names)), "a file is listed under two entries"
    for name in names:
        path = project / name.replace("{package}", "{{cookiecutter.package_name}}")
        assert path.is_file(), f"{name} is in the feature table but not in the template"
    questions = json.loads((REPO_ROOT / "cookiecutter.json").read_text(encoding="utf-8"))
    for answers, _ in FEATURE_FILES:
        for key, on in answers.items():
            choices = questions[key] if isinstance(questions[key], list) else [True, False]
            assert on in choices, f"{key}={on!r} is not an answer of cookiecutter.json"


def test_feature_toggle_given_as_text(cookies):
    # Cookiecutter turns "no"/"yes" into booleans; post_gen copes either way.
    result = cookies.bake(
        extra_context={**VALID_NAMES, "use_amp": "no", "use_ddp": "no"},
        template=str(REPO_ROOT),
    )

    assert result.exception is None, result.exception
    assert post_gen_project.as_bool(result.context["use_amp"]) is False
    package = result.project_path / VALID_NAMES["package_name"]
    assert not (package / "amp.py").exists()
    assert not (package / "distributed.py").exists()


@pytest.mark.parametrize("use_ddp", [True, False])
def test_next_steps_are_printed(cookies, capfd, use_ddp):
    result = bake(cookies, use_ddp=use_ddp)

    assert result.exception is None, result.exception
    out = capfd.readouterr().out
    slug = VALID_NAMES["project_slug"]
    assert f"Created {slug}. Next steps:" in out
    assert f"  cd {slug}\n" in out
    assert "pip install -e ." in out
    assert "python train.py\n" in out or "python train.py " in out
    assert "python train.py optim.lr=0.01 train.epochs=10" in out
    assert ("torchrun --standalone --nproc_per_node=2 train.py" in out) is use_ddp
    assert "python sweep.py" not in out  # use_sweeps is off by default
    # The CPU-only install is named both here and in the baked README's Quick start.
    assert post_gen_project.CPU_TORCH_INDEX in out
    assert post_gen_project.CPU_TORCH_INDEX in (result.project_path / "README.md").read_text()


# --------------------------------------------------------------------------------------------
# post_gen_project: importable functions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("True", True),
        ("yes", True),
        ("Y", True),
        ("on", True),
        ("1", True),
        (" TRUE ", True),
        ("False", False),
        ("no", False),
        ("0", False),
        ("off", False),
        ("", False),
        (None, False),
    ],
)
def test_as_bool(value, expected):
    assert post_gen_project.as_bool(value) is expected


def table_files(*entries: dict, package: str = "pkg") -> list[str]:
    """The files of the feature table's entries with these answers, in the table's order."""
    for answers in entries:
        assert any(answers == listed for listed, _ in FEATURE_FILES), answers
    return [
        name.replace("{package}", package)
        for answers, files in FEATURE_FILES
        if answers in entries
        for name in files
    ]


# The feature table's entries of the trackers that ALL_FEATURES (tracker=tensorboard) leaves out.
OTHER_TRACKERS = ({"tracker": "mlflow"}, {"tracker": "wandb"})


def test_files_to_remove():
    features = {"package_name": "pkg", "project_slug": "proj"}
    all_off = {
        **features,
        "use_amp": False,
        "use_ddp": "no",
        "use_safetensors": "false",
        "use_sweeps": False,
        "ci": "none",
    }

    removed = post_gen_project.files_to_remove({**all_off, "tracker": "csv"})
    every_file = table_files(*(answers for answers, _ in FEATURE_FILES))
    assert sorted(removed) == sorted(every_file)
    assert {"pkg/amp.py", "pkg/sweep_torchrun.py", "sweep.py", ".github/workflows/ci.yml"} <= set(
        removed
    )
    # All features on still leaves out the trackers other than the one chosen.
    assert post_gen_project.files_to_remove({**features, **ALL_FEATURES}) == (
        table_files(*OTHER_TRACKERS)
    )
    assert post_gen_project.files_to_remove({**features, **ALL_FEATURES, "use_amp": "no"}) == (
        table_files({"use_amp": True}, *OTHER_TRACKERS)
    )
    assert "pkg/amp.py" in table_files({"use_amp": True})
    # Text answers in any case and spacing count, as cookiecutter may pass them on.
    assert post_gen_project.files_to_remove(
        {
            **features,
            **ALL_FEATURES,
            "use_ddp": "Yes",
            "tracker": " TensorBoard ",
            "ci": "GitHub",
        }
    ) == table_files(*OTHER_TRACKERS)


def test_files_of_sweeps_with_ddp_need_both_answers():
    features = {"package_name": "pkg", "project_slug": "proj", **ALL_FEATURES}
    both = table_files({"use_sweeps": True, "use_ddp": True})
    assert "pkg/sweep_torchrun.py" in both

    without_ddp = post_gen_project.files_to_remove({**features, "use_ddp": "no"})
    assert without_ddp == table_files(
        {"use_ddp": True}, {"use_sweeps": True, "use_ddp": True}, *OTHER_TRACKERS
    )
    assert "pkg/sweep.py" not in without_ddp
    without_sweeps = post_gen_project.files_to_remove({**features, "use_sweeps": False})
    assert without_sweeps == table_files(
        {"use_sweeps": True}, {"use_sweeps": True, "use_ddp": True}, *OTHER_TRACKERS
    )
    assert "pkg/distributed.py" not in without_sweeps


def test_main_deletes_only_disabled_features(tmp_path, capsys):
    names = [*table_files(*(answers for answers, _ in FEATURE_FILES)), "pkg/model.py"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("", encoding="utf-8")
    features = {
        "project_slug": "proj",
        "package_name": "pkg",
        "use_amp": True,
        "use_ddp": False,
        "use_safetensors": True,
        "tracker": "csv",
        "use_sweeps": True,
        "ci": "none",
    }

    assert post_gen_project.main(features, root=tmp_path) == 0

    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    on = table_files({"use_amp": True}, {"use_safetensors": True}, {"use_sweeps": True})
    assert left == sorted([*on, "pkg/model.py"])
    assert {"pkg/amp.py", "pkg/sweep.py", "sweep.py", "tests/test_safetensors.py"} <= set(left)
    assert "pkg/sweep_torchrun.py" not in left  # sweeps are on, but DDP is off
    assert not (tmp_path / ".github").exists()  # emptied folders go as well
    assert not (tmp_path / "scripts").exists()  # emptied by its only file's removal
    assert "cd proj" in capsys.readouterr().out


def test_main_tolerates_missing_files(tmp_path):
    features = {"project_slug": "proj", "package_name": "pkg", "tracker": "csv"}

    assert post_gen_project.main(features, root=tmp_path) == 0


def test_next_steps_text():
    text = post_gen_project.next_steps("proj", use_ddp=True, use_sweeps=True)

    lines = text.splitlines()
    assert lines[:2] == ["Created proj. Next steps:", "  cd proj"]
    assert lines[2].startswith("  python -m venv .venv")  # the project's own environment
    # The CPU build of torch comes first, else pip takes the 3 GB CUDA build for -e .
    cpu_install = "python -m pip install torch torchvision --index-url " + (
        "https://download.pytorch.org/whl/cpu"
    )
    assert cpu_install in lines[4]
    assert lines[5].startswith("  python -m pip install -e .") and "GB" in lines[5]
    # No promise beyond what was measured (30 s on a 2-core CPU in the template README).
    assert "well under a minute" not in text
    assert "~30 s on a 2-core CPU" in text
    assert "torchrun --standalone --nproc_per_node=2 train.py" in text
    assert "python sweep.py --trials 20" in text
    assert "torchrun" not in post_gen_project.next_steps("proj", use_ddp=False)
    assert "sweep.py" not in post_gen_project.next_steps("proj", use_ddp=False)


# --------------------------------------------------------------------------------------------
# Hostile user text lands intact in the baked project
# --------------------------------------------------------------------------------------------

# Values given non-interactively are rendered as Jinja: {{ '{{' }} yields a literal "{{".
HOSTILE_NAME_INPUT = "Ann's \"quoted\" \\ back\\slash 🚀 Ünïcode {{ '{{' }} 7*6 }}"
HOSTILE_NAME = 'Ann\'s "quoted" \\ back\\slash 🚀 Ünïcode {{ 7*6 }}'
HOSTILE_DESCRIPTION = (
    "Classifies 'shapes' with \"quotes\", a <tag> & an ampersand.\n"
    "Second line ends in a backslash \\"
)
HOSTILE_AUTHOR = 'Seán O\'Brien "Bob" 😀'


@pytest.fixture(scope="module")
def hostile_bake(cookies_session):
    result = cookies_session.bake(
        extra_context={
            **VALID_NAMES,
            **ALL_FEATURES,
            "project_name": HOSTILE_NAME_INPUT,
            "description": HOSTILE_DESCRIPTION,
            "author_name": HOSTILE_AUTHOR,
        },
        template=str(REPO_ROOT),
    )
    assert result.exception is None, result.exception
    assert result.context["project_name"] == HOSTILE_NAME
    assert result.context["description"] == HOSTILE_DESCRIPTION
    assert result.context["author_name"] == HOSTILE_AUTHOR
    return result.project_path


def test_hostile_text_in_pyproject(hostile_bake):
    text = (hostile_bake / "pyproject.toml").read_text(encoding="utf-8")
    project = tomllib.loads(text)["project"]

    assert project["description"] == " ".join(HOSTILE_DESCRIPTION.split())
    assert project["authors"][0]["name"] == HOSTILE_AUTHOR


def test_hostile_text_python_files_compile(hostile_bake):
    sources = sorted(hostile_bake.rglob("*.py"))

    assert sources
    for path in sources:
        compile(path.read_text(encoding="utf-8"), str(path), "exec")


def test_hostile_text_in_readme(hostile_bake):
    readme = (hostile_bake / "README.md").read_text(encoding="utf-8")

    assert HOSTILE_NAME in readme


def test_the_cruft_record_names_where_git_finds_the_template_again():
    assert post_gen_project.template_url("gh:org/torch-template", "/x") == (
        "https://github.com/org/torch-template.git"
    )
    assert post_gen_project.template_url("https://h/t.git", "/x") == "https://h/t.git"
    assert post_gen_project.template_url("../torch-template", str(REPO_ROOT)) == str(REPO_ROOT)


def test_no_cruft_record_without_a_git_checkout_of_the_template_itself(tmp_path):
    plain = tmp_path / "unpacked-zip"
    plain.mkdir()
    assert post_gen_project.cruft_record({"_repo_dir": str(plain), "_template": "x"}) is None
    inside = REPO_ROOT / "hooks"  # a folder of a repository, not its top
    assert post_gen_project.cruft_record({"_repo_dir": str(inside), "_template": "x"}) is None


def test_a_bake_from_a_checkout_records_its_commit_and_answers_for_cruft(tmp_path):
    template = tmp_path / "template"
    shutil.copytree(
        REPO_ROOT, template, ignore=shutil.ignore_patterns(".git", ".venv*", ".ruff_cache")
    )
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "t"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=template)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=template, capture_output=True, text=True
    ).stdout.strip()
    project = Path(cookiecutter(str(template), output_dir=str(tmp_path / "out"), no_input=True))
    record = json.loads((project / ".cruft.json").read_text(encoding="utf-8"))
    assert record["template"] == str(template) and record["commit"] == commit
    answers = record["context"]["cookiecutter"]
    assert answers["_commit"] == commit and answers["package_name"] == "shape_classifier"
    assert not {"_output_dir", "_repo_dir", "_checkout"} & set(answers)
