"""Reading back the CSV files a run writes (metrics.csv, lr.csv).

They are records that anyone may have edited, cut short (a kill or a full disk during a
write), replaced with another version's columns or with bytes that are not text. Reading
one never raises on what it holds: the rows that are whole come back, and what was left out
is said in words, for the one warning of the caller (see log.CSVLog).
"""

import csv
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAX_LINE = 4096  # bytes; a row this project writes is under 300
MAX_COUNT_DIGITS = 18  # an epoch or step number


@dataclass(frozen=True)
class CSVRead:
    """The whole rows of a CSV file, as text keyed by the columns asked for, and what was
    left out of it in words (None: the file is as this version writes it)."""

    rows: list[dict[str, str]]
    problem: str | None = None


def read_rows(
    path: Path, columns: tuple[str, ...], position_column: str, counts: tuple[str, ...] = ()
) -> CSVRead:
    """The rows of `path` that are whole: as many fields as its header, the position a whole
    number past the previous row's, the `counts` whole numbers too, every other value a
    number or empty (not measured: the EMA columns without an EMA, or a column the file's
    header lacks). A missing file has no rows."""
    if not os.path.lexists(path):
        return CSVRead([])
    if path.is_symlink() or not path.is_file():
        return CSVRead([], "it is not a regular file")
    with path.open("rb") as file:
        lines = _lines(file)
        first = next((line for line in lines if line != ""), "")
        if first == "":
            return CSVRead([])  # an empty file: cut before its first row, nothing is lost
        header = None if first is None else _fields(first)
        if header is None or position_column not in header or len(set(header)) < len(header):
            problem = f"its first line is not a header naming the {position_column} column"
            return CSVRead([], problem)
        rows, left_out, last = [], 0, -1
        for line in lines:
            row = _row(line, header, columns, (position_column, *counts))
            if row is not None and int(row[position_column]) > last:
                rows.append(row)
                last = int(row[position_column])
            else:
                left_out += line != ""  # a blank line is no loss
    problems = []
    if header != list(columns):
        problems.append(f"its columns are not this version's ({_bounded(','.join(header))})")
    if left_out:
        problems.append(
            f"{left_out} line(s) are not whole rows (cut short, not numbers, not UTF-8 text, "
            "or out of order)"
        )
    return CSVRead(rows, "; ".join(problems) or None)


def _lines(file: BinaryIO) -> Iterator[str | None]:
    """Each line of `file` as text without its line break; None for one that is not UTF-8,
    longer than MAX_LINE (read past, never held whole), or the last one without its line
    break (a write cut short: this project ends every row with one)."""
    while raw := file.readline(MAX_LINE + 1):
        if raw.endswith(b"\n"):
            try:
                yield raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                yield None
            continue
        while len(raw) > MAX_LINE and not raw.endswith(b"\n"):  # the rest of a long line
            raw = file.readline(MAX_LINE + 1)
        yield None


def _fields(line: str) -> list[str] | None:
    try:
        return next(csv.reader([line]), [])
    except csv.Error:
        return None


def _row(
    line: str | None, header: list[str], columns: tuple[str, ...], counts: tuple[str, ...]
) -> dict[str, str] | None:
    fields = None if line is None else _fields(line)
    if fields is None or len(fields) != len(header):
        return None
    found = dict(zip(header, fields, strict=True))
    row = {}
    for column in columns:
        value = found.get(column, "")
        if column in counts:
            whole = value.isascii() and value.isdigit() and len(value) <= MAX_COUNT_DIGITS
        else:
            whole = value == "" or _is_number(value)
        if not whole:
            return None
        row[column] = value
    return row


def _is_number(text: str) -> bool:
    try:
        float(text)  # nan and inf included: a diverged loss is written as such
    except ValueError:
        return False
    return True


def _bounded(text: str, limit: int = 120) -> str:
    text = text.encode("ascii", "backslashreplace").decode()  # a control character stays seen
    return text if len(text) <= limit else text[: limit - 3] + "..."


def set_aside(path: Path) -> Path:
    """Keep `path` as `<name>.corrupt-N` (the first N free) before it is written anew: as a
    hard link (or a copy) where it is a regular file, so that `path` itself stays in place
    until the caller replaces it; anything else (a link, a folder) is moved."""
    number = 1
    while os.path.lexists(aside := path.with_name(f"{path.name}.corrupt-{number}")):
        number += 1
    if path.is_symlink() or not path.is_file():
        path.rename(aside)
        return aside
    try:
        os.link(path, aside)
    except OSError:  # a filesystem without hard links
        shutil.copy2(path, aside)
    return aside
