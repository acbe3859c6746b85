"""The index of a folder of shards: shards.json, which prepare_shards.py writes last beside
the tar files, and which training reads before any shard.

The folder (or URL) holds `train-000000.tar`, `train-000001.tar`, ... and `val-000000.tar`,
... in the WebDataset layout (each sample `KEY.<image suffix>`, the original file's bytes,
and `KEY.cls`, its class index as text; KEY is the image's index in its split; in decoded
shards, format version 2, `KEY.npy` holds the image decoded, uint8 [C, S, S]), and
shards.json: the format and its version, the class names, the channels, what the training
images are like (survey.py needs it to choose data.image_size and data.flip without reading
a shard), how validation was split off, for decoded shards the settings they were decoded
with ("decoded": image_size, resize, interpolation and the square's side S), and per split
each shard's name, sample count, size and SHA-256. A folder with tar files but no
shards.json is a write that did not finish.

The index comes from wherever the shards are, maybe from someone else: it is read with a
bound on its size, and every field is checked before it is used.
"""

import json
import math
import re
from pathlib import Path

from ..files import read_small_json
from ..pipe_roots import was_given
from ..pretrained import INTERPOLATIONS
from .bundle import DataError
from .images import shown

SHARDS_FILE = "shards.json"
FORMAT = "torch-template image shards"
# 1: the images' files; 2: the same, or with "decoded", the images decoded (--decoded).
VERSION = 2
# The largest side of decoded shards' squares (a 4096 px colour square is 50 MB).
MAX_DECODED_SIDE = 4096
# An index of a million shards is about 150 MB; 64 MB holds 400,000 (100 TB of 256 MB shards).
MAX_INDEX_BYTES = 64 << 20
SPLITS = ("train", "val")
SHARD_NAME = re.compile(r"(train|val)-\d{6}\.tar")
SHA256 = re.compile(r"[0-9a-f]{64}")
# What a folder of shards may hold: the shards, the index, and a killed write's leftovers.
TEMPORARY_NAME = re.compile(r"\..+\.\d+\.tmp")
RERUN = "rerun prepare_shards.py"


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


# What prepare_shards.py leaves in OUT while it writes, before any shard: shards beside it
# without an index are a killed write of its own, which a new write may replace; without it,
# shard-named files are another tool's, and are left alone.
WRITING_MARK = ".prepare_shards-writing"


def is_shard_folder_entry(name: str) -> bool:
    """Whether prepare_shards.py writes files of this name (so it may replace them)."""
    return bool(SHARD_NAME.fullmatch(name) or TEMPORARY_NAME.fullmatch(name)) or (
        name in (SHARDS_FILE, WRITING_MARK)
    )


def is_url(root: str) -> bool:
    """Whether data.root names shards that webdataset opens (http, https, file, a pipe:
    command, ...) rather than a local folder."""
    return bool(re.match(r"[A-Za-z][A-Za-z0-9+.-]+:", root))


def location(root: str, name: str) -> str:
    """Where the file `name` of the shards at `root` is: a path in a local folder; for a URL,
    `name` appended after a "/"; for a pipe: command, put in place of its "{name}"
    (pipe:aws s3 cp s3://bucket/shards/{name} -)."""
    if root.startswith("pipe:"):
        if not was_given(root):
            raise DataError(
                f"data.root={root!r} is a shell command read from a checkpoint or a file from "
                "elsewhere, and is not run; to run it, give it yourself: data.root='pipe:...'"
            )
        return root.replace("{name}", name)
    if is_url(root):
        return f"{root.rstrip('/')}/{name}"
    return str(Path(root) / name)


def read_index(root: str) -> dict:
    """The checked index of the shards at data.root `root` (a folder or a URL); one DataError
    where there is none, it cannot be read, or it is not one (check_index)."""
    where = location(root, SHARDS_FILE)
    if is_url(root):
        return check_index(_read_remote(where), where)
    folder = Path(root)
    if not folder.is_dir():
        problem = "is a file, not a folder" if folder.exists() else "does not exist"
        raise DataError(
            f"data.root={root!r}: the folder of shards {shown(folder)} {problem}; point "
            "data.root at the OUT folder of python prepare_shards.py DATA_ROOT OUT"
        )
    try:
        index = read_small_json(Path(where), MAX_INDEX_BYTES, "an index of shards")
    except FileNotFoundError:
        if any(SHARD_NAME.fullmatch(entry.name) for entry in folder.iterdir()):
            raise DataError(f"{shown(folder)} holds incomplete shards, {RERUN}") from None
        raise DataError(
            f"data.root={root!r}: {shown(folder)} holds no shards ({SHARDS_FILE} is missing); "
            "write them with python prepare_shards.py DATA_ROOT OUT and point data.root at OUT"
        ) from None
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {shown(where)} ({_reason(error)}); {RERUN}") from None
    return check_index(index, shown(where))


def _read_remote(where: str) -> object:
    """The JSON at the URL `where`, read through webdataset's gopen, at most MAX_INDEX_BYTES."""
    from webdataset.gopen import gopen

    try:
        stream = gopen(where, "rb")
        try:
            data = stream.read(MAX_INDEX_BYTES + 1)
        finally:
            stream.close()  # a pipe's command that failed raises here
        if len(data) > MAX_INDEX_BYTES:
            raise ValueError(f"more than {MAX_INDEX_BYTES} bytes, far too large for an index")
        return json.loads(data)
    except (OSError, ValueError, RecursionError) as error:
        raise DataError(
            f"cannot read {where} ({_reason(error)}); check the URL in data.root, and that "
            "this machine can reach it"
        ) from None


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())[:200]
    return text or type(error).__name__


def check_index(index: object, where: str) -> dict:
    """`index` (the JSON of shards.json at `where`) if it is one that this version reads;
    a DataError naming the first problem otherwise."""

    def bad(problem: str) -> DataError:
        return DataError(f"{where} is not a usable index of shards: {problem}; {RERUN}")

    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise bad(f"its format is not {FORMAT!r}")
    version = index.get("version")
    if not _is_int(version) or version < 1:
        raise bad("it has no format version")
    if version > VERSION:
        raise DataError(
            f"{where} is of format version {version}, newer than this project reads "
            f"({VERSION}); update the project (docs/updating.md) or {RERUN} with this one"
        )
    classes = index.get("classes")
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        raise bad("its classes are not a list of names")
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise bad("it needs two or more classes, each named once")
    if index.get("channels") not in (1, 3):
        raise bad("its channels are neither 1 nor 3")
    _check_survey(index.get("survey"), bad)
    splits = index.get("splits")
    if not isinstance(splits, dict) or set(splits) != set(SPLITS):
        raise bad("it does not list the shards of a train and a val split")
    for split in SPLITS:
        _check_split(split, splits[split], bad)
    sized = sum(index["survey"]["shorter_sides"].values())
    if sized > sum(shard["count"] for split in SPLITS for shard in splits[split]):
        raise bad(f"it gives the sizes of {sized} images, more than there are")
    if not isinstance(index.get("validation"), str):
        raise bad("it does not say how validation was split off")
    if "decoded" in index:
        _check_decoded(index["decoded"], version, bad)
    return index


def _check_decoded(decoded: object, version: int, bad) -> None:
    if version < 2:
        raise bad("it says its images are decoded, which format version 1 does not have")
    if not isinstance(decoded, dict):
        raise bad("its decoding settings are not a record")
    size, side, resize = decoded.get("image_size"), decoded.get("side"), decoded.get("resize")
    if not _is_int(size) or not 8 <= size <= MAX_DECODED_SIDE:
        raise bad(f"its decoded images' image size is not a number from 8 to {MAX_DECODED_SIDE}")
    if resize is not None and (not _is_int(resize) or not 0 <= resize <= MAX_DECODED_SIDE):
        raise bad("its decoded images' resize is not a size")
    if not _is_int(side) or side != decoded_side(size, resize):
        raise bad("its decoded images' side does not follow from their image size and resize")
    if decoded.get("interpolation") not in INTERPOLATIONS:
        raise bad(f"its decoded images' interpolation is not one of {', '.join(INTERPOLATIONS)}")


def decoded_side(image_size: int, resize: int | None) -> int:
    """The side of the squares decoded for data.image_size and data.resize (as the decoded
    cache stores them): the resize side (null: image_size * 1.14), or with resize 0 (no
    resize) image_size itself."""
    if resize is None:
        return math.ceil(image_size * 1.14)
    return resize or image_size


def _check_split(split: str, shards: object, bad) -> None:
    if not isinstance(shards, list) or not shards:
        raise bad(f"its {split} split lists no shards")
    names = set()
    for shard in shards:
        if not isinstance(shard, dict):
            raise bad(f"an entry of its {split} split is not a shard")
        name = shard.get("name")
        if not isinstance(name, str) or not SHARD_NAME.fullmatch(name) or name in names:
            raise bad(f"its {split} split names a shard {str(name)[:80]!r}")
        if not name.startswith(f"{split}-"):
            raise bad(f"its {split} split names {name}, a shard of another split")
        names.add(name)
        if not _is_int(shard.get("count")) or shard["count"] < 1:
            raise bad(f"{name} has no sample count")
        if not _is_int(shard.get("bytes")) or shard["bytes"] < 0:
            raise bad(f"{name} has no size")
        if not isinstance(shard.get("sha256"), str) or not SHA256.fullmatch(shard["sha256"]):
            raise bad(f"{name} has no SHA-256")


def _check_survey(survey: object, bad) -> None:
    if not isinstance(survey, dict):
        raise bad("it does not describe the training images")
    sides = survey.get("shorter_sides")
    if not isinstance(sides, dict) or not sides:
        raise bad("it does not give the training images' sizes")
    for side, count in sides.items():
        if not is_number_text(side) or not _is_int(count) or count < 1:
            raise bad("its count of the images' sizes holds something other than counts")
    if not _is_int(survey.get("photo_files")) or survey["photo_files"] < 0:
        raise bad("it does not count the photographs among the training images")
    smallest = survey.get("smallest")
    if not isinstance(smallest, dict) or not isinstance(smallest.get("path"), str):
        raise bad("it does not name the smallest training image")
    size = smallest.get("size")
    if not isinstance(size, list) or len(size) != 2 or not all(map(_is_int, size)):
        raise bad("it does not give the smallest training image's size")


def is_number_text(text: object) -> bool:
    """Whether `text` is a whole number in ASCII digits ("²".isdigit() is true as well)."""
    return isinstance(text, str) and text.isascii() and text.isdigit()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def split_count(index: dict, split: str) -> int:
    return sum(shard["count"] for shard in index["splits"][split])


def shown_root(root: str) -> str:
    return root if is_url(root) else shown(root)


def size_words(size: float) -> str:
    """A size in bytes as a person reads it: 800 bytes, 12.5 MB, 1.2 GB."""
    if size < 1000:
        return f"{size:.0f} bytes"
    power = min(int(math.log10(size) // 3), 4)
    return f"{size / 1000**power:,.1f} {('kB', 'MB', 'GB', 'TB')[power - 1]}"
