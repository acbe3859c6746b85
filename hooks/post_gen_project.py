"""Delete the files of disabled features and print the next steps.

Cookiecutter renders this file with Jinja and runs it inside the freshly generated project
folder. Jinja expressions appear only inside the string literals of the ``__main__`` block, so
the unrendered file is plain Python that linters accept and tests import as
``hooks.post_gen_project``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

# The files each feature owns: (the answers that turn it on, its files). A bake keeps an
# entry's files only when all of its answers hold, and deletes them otherwise; each file is
# listed once. Paths are relative to the project, POSIX style; "{package}" is the package
# folder. The template's tests read this table too.
FEATURE_FILES: list[tuple[dict[str, bool | str], list[str]]] = [
    ({"use_amp": True}, ["{package}/amp.py", "tests/test_amp.py"]),
    (
        {"use_ddp": True},
        [
            "{package}/distributed.py",
            "tests/test_distributed.py",
            "tests/test_preemption.py",
            "scripts/slurm.sbatch",
            "docs/multiple-processes.md",
        ],
    ),
    ({"use_safetensors": True}, ["{package}/safetensors_io.py", "tests/test_safetensors.py"]),
    (
        {"tracker": "tensorboard"},
        ["{package}/tensorboard_log.py", "tests/test_tensorboard.py", "docs/tensorboard.md"],
    ),
    ({"tracker": "mlflow"}, ["{package}/mlflow_log.py", "tests/test_mlflow.py", "docs/mlflow.md"]),
    ({"tracker": "wandb"}, ["{package}/wandb_log.py", "tests/test_wandb.py", "docs/wandb.md"]),
    (
        {"use_sweeps": True},
        [
            "sweep.py",
            "{package}/sweep.py",
            "{package}/sweep_space.py",
            "configs/sweep.yaml",
            "tests/test_sweep.py",
            "docs/sweeps.md",
        ],
    ),
    (
        {"use_sweeps": True, "use_ddp": True},
        ["{package}/sweep_torchrun.py", "tests/test_sweep_torchrun.py"],
    ),
    ({"ci": "github"}, [".github/workflows/ci.yml", ".pre-commit-config.yaml"]),
]

# Answers that switch a yes/no feature on, compared in lowercase. Cookiecutter normally hands
# booleans over as bool, but a value typed on the command line may arrive as text.
TRUE_STRINGS = frozenset({"1", "on", "t", "true", "y", "yes"})


def as_bool(value: Any) -> bool:
    """Interpret a cookiecutter yes/no answer given as bool or as text."""
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    return str(value).strip().lower() in TRUE_STRINGS


def answer_is(features: dict[str, Any], key: str, wanted: bool | str) -> bool:
    """Whether the answer ``key`` is ``wanted``: a yes/no answer as bool or text, a choice
    compared in lowercase."""
    if isinstance(wanted, bool):
        return as_bool(features.get(key)) is wanted
    return str(features.get(key, "")).strip().lower() == wanted


def files_to_remove(features: dict[str, Any]) -> list[str]:
    """Return the project-relative paths (POSIX style) owned by the features that are off.

    ``features`` holds the cookiecutter answers ``package_name``, ``use_amp``, ``use_ddp``,
    ``use_safetensors``, ``tracker``, ``use_sweeps`` and ``ci``.
    """
    package = features["package_name"]
    return [
        path.replace("{package}", package)
        for answers, paths in FEATURE_FILES
        if not all(answer_is(features, key, wanted) for key, wanted in answers.items())
        for path in paths
    ]


def remove_files(root: Path, paths: list[str]) -> list[str]:
    """Delete ``paths`` under ``root``, and the folders they leave empty (e.g. ``scripts/``);
    a path that is already absent is fine.

    Returns the paths that were actually deleted.
    """
    removed = []
    for relative in paths:
        path = root / relative
        if path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(relative)
            remove_empty_folders(root, path.parent)
    return removed


def remove_empty_folders(root: Path, folder: Path) -> None:
    """Delete ``folder`` and its parents up to ``root`` while they are empty (e.g. .github/)."""
    while folder != root and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


# Where pip finds the CPU-only build of torch (the baked README's Quick start names it too).
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


def next_steps(project_slug: str, use_ddp: bool, use_sweeps: bool = False) -> str:
    """Return the text telling the user how to start training."""
    lines = [
        f"Created {project_slug}. Next steps:",
        f"  cd {project_slug}",
        "  python -m venv .venv && . .venv/bin/activate    # the project's own environment",
        # Without an NVIDIA GPU the CPU build of torch is all that is needed, a 0.19 GB
        # download instead of 3 GB: it must be installed first, or pip takes the CUDA build.
        "  # no NVIDIA GPU? install the CPU build of torch first (0.19 GB to download):",
        f"  #   python -m pip install torch torchvision --index-url {CPU_TORCH_INDEX}",
        "  python -m pip install -e .                       "
        "# otherwise torch's CUDA build: ~3 GB to download, ~5.5 GB on disk",
        # Measured with the defaults: 30 s from the shell on a 2-core CPU (template README).
        "  python train.py                                  "
        "# trains on the built-in shapes data: ~30 s on a 2-core CPU",
        "  python train.py optim.lr=0.01 train.epochs=10    # override any config key",
    ]
    if use_ddp:
        lines.append(
            "  torchrun --standalone --nproc_per_node=2 train.py  # two processes with DDP"
        )
    if use_sweeps:
        lines.append(
            "  python sweep.py --trials 20                      # search lr, weight decay, ..."
        )
    return "\n".join(lines)


# copier's answers file: the template holds it for copier bakes (hooks/copier_tasks.py); in a
# cookiecutter bake it renders empty and goes.
COPIER_ANSWERS_FILE = ".copier-answers.yml"


# cruft's record of the template a project came from (`cruft update` reads it): written when
# the template is a git checkout, so that a cookiecutter bake updates without `cruft link`,
# which would record the template's newest commit and so miss every change since the bake.
CRUFT_FILE = ".cruft.json"
# cookiecutter's own keys for one run, not answers: cruft's record leaves them out.
RUN_KEYS = ("_output_dir", "_repo_dir", "_checkout")
# cookiecutter's abbreviations (gh:org/name), as cruft needs the URL git clones.
ABBREVIATIONS = {
    "gh": "https://github.com/{0}.git",
    "gl": "https://gitlab.com/{0}.git",
    "bb": "https://bitbucket.org/{0}",
}


def git_output(folder: str, *args: str) -> str | None:
    """The output of `git -C folder ARGS`, or None when git or the repository is missing."""
    try:
        done = subprocess.run(
            ["git", "-C", folder, *args], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def template_url(template: str, repo_dir: str) -> str:
    """Where git finds the template again: an abbreviation expanded, a URL as given, a local
    checkout by its absolute path."""
    prefix, colon, rest = template.partition(":")
    if colon and prefix in ABBREVIATIONS:
        return ABBREVIATIONS[prefix].format(rest)
    if "://" in template or template.startswith("git@"):
        return template
    return str(Path(repo_dir).resolve())


def cruft_record(context: dict[str, Any]) -> dict[str, Any] | None:
    """The .cruft.json of this bake, or None when the template is not a git checkout of its
    own (a zip download, a folder inside another repository)."""
    repo_dir = str(context.get("_repo_dir", ""))
    top = git_output(repo_dir, "rev-parse", "--show-toplevel") if repo_dir else None
    if top is None or Path(top).resolve() != Path(repo_dir).resolve():
        return None
    commit = git_output(repo_dir, "rev-parse", "HEAD")
    if not commit:
        return None
    url = template_url(str(context.get("_template", "")), repo_dir)
    answers = {key: value for key, value in context.items() if key not in RUN_KEYS}
    answers.update(_template=url, _commit=commit)
    return {
        "template": url,
        "commit": commit,
        "checkout": context.get("_checkout"),
        "context": {"cookiecutter": answers},
        "directory": None,
    }


def write_cruft_record(root: Path, context: dict[str, Any]) -> bool:
    record = cruft_record(context)
    if record is not None:
        (root / CRUFT_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record is not None


def main(
    features: dict[str, Any], root: Path | None = None, context: dict[str, Any] | None = None
) -> int:
    """Remove the disabled features' files under ``root`` (default: cwd) and copier's empty
    answers file, record the template for cruft (``context``: cookiecutter's whole context);
    print next steps."""
    root = root if root is not None else Path.cwd()
    remove_files(root, [*files_to_remove(features), COPIER_ANSWERS_FILE])
    if context is not None:
        write_cruft_record(root, context)
    use_ddp, use_sweeps = as_bool(features.get("use_ddp")), as_bool(features.get("use_sweeps"))
    print(next_steps(features["project_slug"], use_ddp, use_sweeps))
    return 0


if __name__ == "__main__":
    # tojson on a line of its own inside a raw string survives quotes, backslashes and newlines,
    # and renders booleans as JSON true/false whatever form cookiecutter gives them in.
    RENDERED = {
        "project_slug": r"""
{{ cookiecutter.project_slug | tojson }}
""",
        "package_name": r"""
{{ cookiecutter.package_name | tojson }}
""",
        "use_amp": r"""
{{ cookiecutter.use_amp | tojson }}
""",
        "use_ddp": r"""
{{ cookiecutter.use_ddp | tojson }}
""",
        "use_safetensors": r"""
{{ cookiecutter.use_safetensors | tojson }}
""",
        "tracker": r"""
{{ cookiecutter.tracker | tojson }}
""",
        "use_sweeps": r"""
{{ cookiecutter.use_sweeps | tojson }}
""",
        "ci": r"""
{{ cookiecutter.ci | tojson }}
""",
    }
    CONTEXT = json.loads(
        r"""
{{ cookiecutter | tojson }}
""".strip()
    )
    sys.exit(main({key: json.loads(text.strip()) for key, text in RENDERED.items()}, None, CONTEXT))
