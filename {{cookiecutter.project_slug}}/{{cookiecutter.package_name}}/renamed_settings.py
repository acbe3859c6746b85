"""Settings the template renamed, so that files written before a rename keep working.

Each row of RENAMED is (the template version that made the rename, the old key, the new key),
oldest first. A settings file, a `key=value` override or a checkpoint's saved config that
still uses an old key is read as the new one, with one warning naming both: runs, configs and
checkpoints made before an update go on working. `copier update` also rewrites the project's
own YAML files under configs/ before it merges (the template's hooks/migrations.py reads this
table from the new version). A rename adds its row here in the same change that renames the
key, and a line to the template's CHANGELOG.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

log = logging.getLogger(__name__)

RENAMED: tuple[tuple[str, str, str], ...] = ()


def current_key(key: str, source: str) -> str:
    """The name today of the dotted key ``key`` given in ``source``, warning when it is old."""
    for version, old, new in RENAMED:
        if key == old:
            _warn(source, version, old, new)
            key = new
    return key


def with_current_keys(settings: dict[Any, Any], source: str) -> dict[Any, Any]:
    """A copy of ``settings`` (nested) with every old key moved to its new place.

    Where both the old and the new key are given, the new one wins and the warning says so.
    """
    settings = copy.deepcopy(settings)
    for version, old, new in RENAMED:
        value = _pop(settings, old.split("."))
        if value is _ABSENT:
            continue
        if _get(settings, new.split(".")) is not _ABSENT:
            log.warning(
                "%s: %s was renamed %s in version %s, and both are given: %s is used",
                *(source, old, new, version, new),
            )
            continue
        _warn(source, version, old, new)
        _put(settings, new.split("."), value)
    return settings


def _warn(source: str, version: str, old: str, new: str) -> None:
    log.warning(
        "%s: %s was renamed %s in version %s; read as %s (rename it there to silence this)",
        *(source, old, new, version, new),
    )


_ABSENT = object()


def _get(tree: dict[Any, Any], path: list[str]) -> Any:
    for part in path:
        if not isinstance(tree, dict) or part not in tree:
            return _ABSENT
        tree = tree[part]
    return tree


def _pop(tree: dict[Any, Any], path: list[str]) -> Any:
    parent = _get(tree, path[:-1])
    if not isinstance(parent, dict) or path[-1] not in parent:
        return _ABSENT
    return parent.pop(path[-1])


def _put(tree: dict[Any, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value
