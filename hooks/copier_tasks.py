"""The post-generation steps of a copier bake: the same rules cookiecutter's hooks apply.

copier.yml runs this file after it has rendered the project, inside the project folder, with
the answers as JSON:

    python hooks/copier_tasks.py check  ANSWERS_JSON
    python hooks/copier_tasks.py finish ANSWERS_JSON OPERATION

``check`` refuses a project_slug or package_name that pre_gen_project.py refuses (exit 1, one
line per answer; copier then removes the folder it created). ``finish`` deletes the files of
the features that are off, as post_gen_project.py does, and prints the next steps after a
first copy (an update's regenerations stay quiet).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# The hooks are plain files, not an installed package: import the two siblings by path.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import post_gen_project  # noqa: E402
import pre_gen_project  # noqa: E402

USAGE = "usage: copier_tasks.py check ANSWERS_JSON | finish ANSWERS_JSON [copy|update|recopy]"


def check(answers: dict) -> int:
    """Exit status of pre_gen_project's name check for the two names in ``answers``."""
    return pre_gen_project.main(str(answers["project_slug"]), str(answers["package_name"]))


def finish(answers: dict, operation: str, root: Path) -> int:
    """Remove the disabled features' files under ``root``; print next steps on a first copy."""
    post_gen_project.remove_files(root, post_gen_project.files_to_remove(answers))
    if operation == "copy":
        print(
            post_gen_project.next_steps(
                str(answers["project_slug"]),
                post_gen_project.as_bool(answers.get("use_ddp")),
                post_gen_project.as_bool(answers.get("use_sweeps")),
            )
        )
    return 0


def main(argv: list[str], root: Path | None = None) -> int:
    if len(argv) < 2 or argv[0] not in {"check", "finish"}:
        print(USAGE, file=sys.stderr)
        return 2
    answers = json.loads(argv[1])
    if argv[0] == "check":
        return check(answers)
    operation = argv[2] if len(argv) > 2 else "copy"
    return finish(answers, operation, root if root is not None else Path.cwd())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
