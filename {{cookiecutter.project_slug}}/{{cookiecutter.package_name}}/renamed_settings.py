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


def current_name(key: str) -> str:
    """The name today of the dotted key ``key``, following every rename in order."""
    for _, old, new in RENAMED:
        if key == old:
            key = new
    return key


def current_key(key: str, source: str) -> str:
    """The name today of the dotted key ``key`` given in ``source``, warning when it is old."""
    new = current_name(key)
    if new != key:
        _warn(source, _version_of(key), key, new)
    return new


def with_current_keys(settings: dict[Any, Any], source: str) -> dict[Any, Any]:
    """A copy of ``settings`` (nested) with every old key moved to its new place, one warning
    per key given (a key renamed twice is named with today's name).

    Where both the old and the new key are given, the new one wins and the warning says so.
    """
    settings = copy.deepcopy(settings)
    moved: dict[str, str] = {}  # the new place of each key moved here -> the key as given
    for _, old, new in RENAMED:
        value = _pop(settings, old.split("."))
        if value is _ABSENT:
            continue
        given = moved.pop(old, old)
        if _get(settings, new.split(".")) is not _ABSENT:
            log.warning(
                "%s: %s was renamed %s in version %s, and both are given: %s is used",
                *(source, given, current_name(new), _version_of(given), current_name(new)),
            )
            continue
        _put(settings, new.split("."), value)
        moved[new] = given
    for new, given in moved.items():
        _warn(source, _version_of(given), given, new)
    return settings


def _version_of(key: str) -> str:
    """The version of the last rename that ``key`` went through."""
    version = ""
    for row_version, old, new in RENAMED:
        if key == old:
            version, key = row_version, new
    return version


# (source, old key) pairs already warned of: a run reads its settings and its checkpoint's
# config more than once, and one warning each is enough.
_warned: set[tuple[str, str]] = set()


def _warn(source: str, version: str, old: str, new: str) -> None:
    if (source, old) in _warned:
        return
    _warned.add((source, old))
    advice = {
        "the command line": f"; write {new}=...",
        "the checkpoint": "; the run goes on with it, and saves it under the new name",
    }.get(source, "; rename it in that file to silence this")
    log.warning("%s: %s was renamed %s in version %s%s", source, old, new, version, advice)


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
