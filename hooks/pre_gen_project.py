"""Validate the project slug and package name before cookiecutter writes anything.

Cookiecutter renders this file with Jinja and runs it with its own interpreter. Jinja
expressions appear only inside the string literals of the ``__main__`` block, so the
unrendered file is plain Python that linters accept and tests import as ``hooks.pre_gen_project``.
On a bad answer the hook prints one message per answer to stderr and exits 1; cookiecutter then
removes the project folder it had just created, so nothing is left behind.
"""

from __future__ import annotations

import json
import keyword
import re
import sys
import unicodedata

# Installed packages that a project package (or folder on sys.path) of the same name would shadow:
# the baked project's dependencies, its optional extras and the tools used around it. Names are
# import names; they are compared in lowercase because macOS and Windows ignore case in paths.
SHADOWED_PACKAGES = (
    "PIL",
    "alembic",
    "cookiecutter",
    "jinja2",
    "lightning",
    "matplotlib",
    "mlflow",
    "numpy",
    "omegaconf",
    "optuna",
    "pip",
    "pytest",
    "pytorch_lightning",
    "ruff",
    "safetensors",
    "setuptools",
    "sqlalchemy",
    "tensorboard",
    "torch",
    "torchaudio",
    "torchvision",
    "tqdm",
    "triton",
    "wandb",
    "wheel",
    "yaml",
)
_SHADOWED_BY_LOWER = {name.lower(): name for name in SHADOWED_PACKAGES}

# sys.stdlib_module_names exists from Python 3.10 (older interpreters get the usual suspects);
# it leaves out the regression-test package "test", which a project package must not shadow either.
# fmt: off
STDLIB_MODULES = frozenset({"test"}) | frozenset(
    getattr(
        sys,
        "stdlib_module_names",
        {
            "abc", "argparse", "ast", "asyncio", "collections", "copy", "csv", "dataclasses",
            "datetime", "enum", "functools", "glob", "io", "itertools", "json", "logging",
            "math", "os", "pathlib", "pickle", "platform", "random", "re", "shutil", "signal",
            "socket", "statistics", "string", "subprocess", "sys", "tempfile", "test", "time",
            "types", "typing", "unittest", "uuid", "warnings",
        },
    )
)
# fmt: on

IDENTIFIER_RULE = "letters, digits and underscores, not starting with a digit"
FALLBACK_NAME = "my_project"


def _is_lowercase_identifier(value: str) -> bool:
    return value.isascii() and value.isidentifier() and value == value.lower()


def _is_taken(value: str) -> bool:
    """True when ``value`` is a keyword or would shadow a stdlib module or installed package."""
    return (
        keyword.iskeyword(value) or value in STDLIB_MODULES or value.lower() in _SHADOWED_BY_LOWER
    )


def suggest_name(value: str) -> str:
    """Return a close name that passes :func:`validate_identifier`.

    Lowercases, folds accents to ASCII, replaces every other character by ``_``, prefixes a
    leading digit with ``project_`` and appends ``_project`` to a taken name.
    """
    folded = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode("ascii")
    name = re.sub(r"[^a-z0-9_]+", "_", folded.lower())
    name = re.sub(r"_+", "_", name).strip("_")
    if not name:
        return FALLBACK_NAME
    if name[0].isdigit():
        name = f"project_{name}"
    while _is_taken(name):
        name = f"{name}_project"
    return name


def validate_identifier(kind: str, value: str) -> str | None:
    """Return an error message when ``value`` is not usable as ``kind``, else None.

    ``kind`` names the answer in the message (``project_slug`` or ``package_name``).
    """
    if not value:
        return (
            f"ERROR: {kind} is empty; it must be a lowercase Python identifier "
            f"({IDENTIFIER_RULE}), e.g. '{FALLBACK_NAME}'."
        )
    if not _is_lowercase_identifier(value):
        return (
            f"ERROR: {kind} {value!r} is not a lowercase Python identifier "
            f"({IDENTIFIER_RULE}); try {suggest_name(value)!r}."
        )
    if keyword.iskeyword(value):
        return (
            f"ERROR: {kind} {value!r} is a Python keyword and cannot be imported; "
            f"choose another name, e.g. {suggest_name(value)!r}."
        )
    if value in STDLIB_MODULES:
        return (
            f"ERROR: {kind} {value!r} would shadow the standard-library module {value!r}; "
            f"choose another name, e.g. {suggest_name(value)!r}."
        )
    if value in _SHADOWED_BY_LOWER:
        return (
            f"ERROR: {kind} {value!r} would shadow the installed package "
            f"{_SHADOWED_BY_LOWER[value]!r}; "
            f"choose another name, e.g. {suggest_name(value)!r}."
        )
    return None


def validate(project_slug: str, package_name: str) -> list[str]:
    """Return every error message for the two answers (one message when they are the same)."""
    if project_slug == package_name:
        error = validate_identifier("project_slug (and package_name)", project_slug)
        return [error] if error else []
    errors = [
        validate_identifier("project_slug", project_slug),
        validate_identifier("package_name", package_name),
    ]
    return [error for error in errors if error]


def main(project_slug: str, package_name: str) -> int:
    """Print the errors to stderr; return the exit status (0 when both answers are valid)."""
    errors = validate(project_slug, package_name)
    for error in errors:
        print(error, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    # tojson on a line of its own inside a raw string survives quotes, backslashes and newlines.
    PROJECT_SLUG = json.loads(
        r"""
{{ cookiecutter.project_slug | tojson }}
""".strip()
    )
    PACKAGE_NAME = json.loads(
        r"""
{{ cookiecutter.package_name | tojson }}
""".strip()
    )
    sys.exit(main(PROJECT_SLUG, PACKAGE_NAME))
