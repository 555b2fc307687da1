"""Which manifest files there are: the paths given, directories walked, and a problem line for
everything that cannot be used (issue 13: data must never vanish without a word)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable

SUFFIXES = (".yaml", ".yml", ".json")


class Unreadable(str):
    """A problem line about a file or directory that could not be read, as opposed to one whose
    content is wrong: on a reload, what it held at the last good read is kept (and logged)."""

    path: str

    def __new__(cls, path, text: str):
        line = super().__new__(cls, text)
        line.path = str(path)
        return line

    def __reduce__(self):                 # pickled back from the parsing worker processes
        return (Unreadable, (self.path, str(self)))


def files_of(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """The manifest files under ``paths``, and a line for each path that cannot be used. A
    directory or file kdns cannot read is a problem (Unreadable), never silently skipped: its
    Services would go NXDOMAIN without a word."""
    out: list[Path] = []
    problems: list[str] = []
    for raw in paths:
        path = Path(raw)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if os.path.islink(path):
                problems.append(Unreadable(path, f"{path}: broken symlink (to {os.readlink(path)})"))
            else:
                problems.append(f"{path}: no such file or directory")
            continue
        except OSError as exc:
            problems.append(Unreadable(path, f"{path}: cannot read: {exc.strerror or exc}"))
            continue
        if stat.S_ISDIR(st.st_mode):
            out.extend(_walk(path, problems))
        elif stat.S_ISREG(st.st_mode):
            out.append(path)
        else:
            problems.append(f"{path}: not a regular file ({_file_type(st.st_mode)}); give a manifest "
                            f"file or a directory of them")
    return out, problems


def _walk(top: Path, problems: list[str]) -> list[Path]:
    found: list[Path] = []

    def unreadable(exc: OSError) -> None:
        where = exc.filename or top
        problems.append(Unreadable(where, f"{where}: cannot read directory: {exc.strerror or exc}"))

    for root, dirs, names in os.walk(top, onerror=unreadable):
        dirs.sort()
        for name in names:
            if not name.endswith(SUFFIXES):
                continue
            full = Path(root, name)
            try:
                st = os.stat(full)
            except FileNotFoundError:
                if os.path.islink(full):
                    problems.append(Unreadable(full, f"{full}: broken symlink (to {os.readlink(full)})"))
                continue                  # gone since the directory was listed
            except OSError as exc:
                problems.append(Unreadable(full, f"{full}: cannot read: {exc.strerror or exc}"))
                continue
            if stat.S_ISREG(st.st_mode):
                found.append(full)
            elif not stat.S_ISDIR(st.st_mode):
                problems.append(f"{full}: not a regular file ({_file_type(st.st_mode)})")
    return sorted(found)


def _file_type(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"


def stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
