"""Whether the classes of the data are those a checkpoint was trained on, said by name.

A model's outputs are positions: output 3 means "the fourth class of training". Data whose
class folders were renamed, added, removed or merely sorted differently would silently pair
each output with another name, so training on (resume) and evaluating with such data is
refused with the differences spelled out.
"""


def class_difference(trained: list[str], found: list[str]) -> str | None:
    """None when `found` is `trained`, else what differs, by name: classes missing from the
    data, classes the checkpoint never saw, and names at other positions."""
    if list(trained) == list(found):
        return None
    missing = [name for name in trained if name not in set(found)]
    new = [name for name in found if name not in set(trained)]
    parts = []
    if missing:
        parts.append(f"missing from the data: {', '.join(missing)}")
    if new:
        parts.append(f"not in the checkpoint: {', '.join(new)}")
    if not parts:  # the same names in another order
        moved = [
            f"{name} (output {trained.index(name)}, now {position})"
            for position, name in enumerate(found)
            if trained.index(name) != position
        ]
        parts.append(f"in another order: {', '.join(moved)}")
    if len(found) != len(trained):
        parts.append(f"{len(trained)} classes trained, {len(found)} found")
    return "; ".join(parts)
