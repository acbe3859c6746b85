"""The post-generation steps of a copier bake: the same rules cookiecutter's hooks apply.

copier.yml runs this file after it has rendered the project, inside the project folder, with
the answers as JSON:

    python hooks/copier_tasks.py check  ANSWERS_JSON
    python hooks/copier_tasks.py finish ANSWERS_JSON OPERATION FOLDER_NAME

``check`` refuses a project_slug or package_name that pre_gen_project.py refuses (exit 1, one
line per answer; copier then removes the folder if it created it). The files of the features
that are off are never written (copier.yml excludes them, as post_gen_project.py deletes them
from a cookiecutter bake), so a file of the user's at such a path is left alone; ``finish``
removes the folders they would have filled when copier left them empty (e.g. .github/), and
prints the next steps after a first copy (an update's regenerations stay quiet).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# The hooks are plain files, not an installed package: import the two siblings by path.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import post_gen_project  # noqa: E402
import pre_gen_project  # noqa: E402

USAGE = (
    "usage: copier_tasks.py check ANSWERS_JSON | finish ANSWERS_JSON [copy|update|recopy] [FOLDER]"
)


def check(answers: dict) -> int:
    """Exit status of pre_gen_project's name check for the two names in ``answers``."""
    return pre_gen_project.main(str(answers["project_slug"]), str(answers["package_name"]))


def finish(answers: dict, operation: str, root: Path, folder: str = "") -> int:
    """Remove the empty folders of the disabled features under ``root``; print next steps on a
    first copy."""
    for relative in post_gen_project.files_to_remove(answers):
        post_gen_project.remove_empty_folders(root, (root / relative).parent)
    if operation == "copy":
        print(
            post_gen_project.next_steps(
                folder or str(answers["project_slug"]),  # where copier wrote it
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
    folder = argv[3] if len(argv) > 3 else ""
    return finish(answers, operation, root if root is not None else Path.cwd(), folder)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
