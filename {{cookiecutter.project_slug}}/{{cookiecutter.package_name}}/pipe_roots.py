"""The `pipe:` data.root values this process's user gave it.

A `pipe:` data.root is a shell command: webdataset runs it to read each shard (data.dataset=
shards). A checkpoint records the data.root it was trained with, and checkpoints and run
folders may come from elsewhere (`python evaluate.py runs/copied-from-a-colleague`): a command
read from one must never run. So a pipe: root runs only when the user gave it to this process,
on the command line or in a settings file named there; config.py notes each such value here
as it reads them, and data/shard_index.py asks before it runs one.
"""

from typing import Any

_given: set[str] = set()


def note_given(settings: Any) -> None:
    """Remember a pipe: data.root in ``settings`` (nested, as read from the user)."""
    data = settings.get("data") if isinstance(settings, dict) else None
    root = data.get("root") if isinstance(data, dict) else None
    if isinstance(root, str) and root.startswith("pipe:"):
        _given.add(root)


def was_given(root: str) -> bool:
    """Whether the user gave this pipe: root to this process."""
    return root in _given
