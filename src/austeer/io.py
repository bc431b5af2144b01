"""Writing outputs safely, and reading JSONL: austeer never deletes what it did not write.

**Files** (``atomic_write_text``, ``atomic_save_tensors``) are written to a sibling temp file and moved
into place with ``os.replace``: the target is the old or the new file at every instant, never half
written. A directory standing where a file goes is refused.

**Directories** (a spec, an exported checkpoint, a report's figure folder) are built in a sibling
temp directory ``.NAME.tmp-PID-HOST-XXXXXXXX`` by ``write(tmp)``, get a marker file ``.austeer``
(JSON: the kind of output and the names written), and are then swapped into place:

- on Linux, ``renameat2(RENAME_EXCHANGE)`` trades the names of the old and the new directory in one
  atomic step, so ``NAME`` is the old or the new output at every instant; the old one, now under the
  temp name, is deleted afterwards;
- where that is not available (other systems, some filesystems), the old directory is renamed to
  ``.NAME.old-PID-HOST-XXXXXXXX`` and the new one into place. A run killed between those two renames
  leaves the old output under the backup name; the next write to ``NAME`` (or :func:`recover`)
  renames it back first, so the old output is never lost.

**Ownership.** An existing directory is replaced only when it is empty, or its marker names the same
kind of output and it holds nothing but what the marker lists, or it is a spec, export or figure
folder of an older austeer (recognised by its exact files). Anything else raises
:class:`OutputExistsError` naming the path, unless ``force=True`` (the CLI's ``--force``). A *file* where
a directory goes is refused even with ``force``: no austeer output is a file there, and a typo
should not cost a file.

**Leftovers.** Temp and backup siblings whose process (on this host) no longer runs are removed, or
restored as above, by the next write to the same target.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from austeer.io import atomic_write_dir, OutputExistsError
    >>> d = Path(tempfile.mkdtemp()) / "out"
    >>> _ = atomic_write_dir(d, lambda tmp: (tmp / "a.txt").write_text("new"), kind="notes")
    >>> (d / "a.txt").read_text()
    'new'
    >>> (d / "thesis.txt").write_text("keep")
    4
    >>> try:
    ...     atomic_write_dir(d, lambda tmp: None, kind="notes")
    ... except OutputExistsError as exc:
    ...     print("refused")
    refused
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: the marker file in every directory austeer writes
MARKER = ".austeer"

# files written by an older austeer, recognised without a marker
_SPEC_FILES = {"steer.json", "scores.safetensors"}
_EXPORT_FILES = {
    "austeer_steer.json",
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
}


class OutputExistsError(FileExistsError):
    """The output path holds something austeer did not write (or a file where a directory goes)."""

    def __str__(self) -> str:  # one line, without FileExistsError's "[Errno ...]" decoration
        return str(self.args[0]) if self.args else ""


# -- reading


def iter_jsonl(path: str | Path, kind: str, error: type[ValueError] = ValueError) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed object)`` of every non-blank line of a UTF-8 JSONL file.

    Bad JSON or bytes that are not UTF-8 raise ``error`` naming the file and line; a missing path raises
    :class:`FileNotFoundError`, a directory ``error``.

    Example:
        >>> import tempfile
        >>> f = tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False)
        >>> _ = f.write(b'{"a": 1}\\n\\n[2]\\n'); f.close()
        >>> list(iter_jsonl(f.name, "demo"))
        [(1, {'a': 1}), (3, [2])]
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: {kind} file does not exist")
    if path.is_dir():
        raise error(f"{path}: is a directory; expected a {kind} JSONL file (one JSON object per line)")
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise error(
                    f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                    f"expected a UTF-8 {kind} JSONL file"
                ) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            except (ValueError, RecursionError) as exc:  # integers over the digit limit, absurd nesting
                raise error(f"{path}:{lineno}: invalid JSON ({type(exc).__name__}: {str(exc)[:100]})") from None
            yield lineno, obj


# -- leftovers of killed runs


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _sibling(path: Path, role: str, token: str) -> Path:
    return path.with_name(f".{path.name}.{role}-{os.getpid()}-{_host()}-{token}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover(path: str | Path) -> None:
    """Clean up after a killed write to ``path``: restore its backup if ``path`` is missing, drop temp files.

    Only siblings named by this module, made on this host by a process that no longer runs, are
    touched. Runs at the start of every write; call it yourself to repair a target without writing.

    Example:
        >>> import tempfile
        >>> recover(Path(tempfile.mkdtemp()) / "spec")   # nothing to do
    """
    path = Path(path)
    if not path.parent.is_dir():
        return
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(tmp|old)-(\d+)-{re.escape(_host())}-[A-Za-z0-9_]{{8}}")
    for sibling in sorted(path.parent.iterdir()):
        match = pattern.fullmatch(sibling.name)
        if match is None or _pid_alive(int(match.group(2))):
            continue
        if match.group(1) == "old" and not (path.exists() or path.is_symlink()):
            sibling.rename(path)  # the killed run had moved the old output aside: put it back
        else:
            _remove(sibling)


# -- ownership


def _marker(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str) or not isinstance(obj.get("files"), list):
        return None
    return obj


def _legacy(path: Path, names: set[str], kind: str) -> bool:
    """A directory written by an austeer without markers, recognised by exactly its files."""
    if kind == "spec" and "steer.json" in names and names <= _SPEC_FILES:
        try:
            return "format_version" in json.loads((path / "steer.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            return False
    if kind == "export":
        return "austeer_steer.json" in names and names <= _EXPORT_FILES
    if kind == "figures":
        return all(n.endswith(".png") and (path / n).is_file() for n in names)
    return False


def _foreign(path: Path, kind: str) -> str | None:
    """Why the directory ``path`` is not a ``kind`` output austeer may replace (None: it may)."""
    names = {p.name for p in path.iterdir()}
    if not names:
        return None
    marker = _marker(path)
    if marker is not None:
        if marker["kind"] != kind:
            return f"it is an austeer {marker['kind']} directory, not {kind!r} output"
        extra = sorted(names - {MARKER} - {str(n) for n in marker["files"]})
        if extra:
            more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
            return f"it holds {extra[0]!r}{more}, which austeer did not write"
        return None
    if _legacy(path, names, kind):
        return None
    shown = sorted(names)[0]
    return f"it is not {kind!r} output austeer wrote (it holds {shown!r}{' and more' if len(names) > 1 else ''})"


def check_parents(path: str | Path) -> None:
    """Raise :class:`NotADirectoryError` when the nearest existing ancestor of ``path`` is not a directory
    (a file where a folder of the output path goes: the later ``mkdir`` would only say "File exists").

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "notes.txt"
        >>> _ = f.write_text("x")
        >>> try:
        ...     check_parents(f / "out" / "spec")
        ... except NotADirectoryError as exc:
        ...     print(str(exc).split("notes.txt")[-1])
         is a file, not a directory, so nothing can be written inside it; choose another path
    """
    path = Path(path)
    for parent in path.parents:  # nearest first
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise NotADirectoryError(
                    f"{path}: {parent} is a file, not a directory, so nothing can be written inside it; "
                    "choose another path"
                )
            return


def check_replaceable(path: str | Path, kind: str, force: bool = False) -> None:
    """Raise :class:`OutputExistsError` unless a ``kind`` directory may be written at ``path``.

    Free when ``path`` does not exist; an existing directory must be austeer's own output of the same
    kind (or ``force``); a file is always refused. Call it before long work to fail early.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> (d / "thesis.txt").write_text("keep")
        4
        >>> try:
        ...     check_replaceable(d, "spec")
        ... except OutputExistsError as exc:
        ...     print(str(exc).split(": ", 1)[1])
        it is not 'spec' output austeer wrote (it holds 'thesis.txt'); refusing to replace it (--force replaces it)
    """
    path = Path(path)
    check_parents(path)
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_symlink() or not path.is_dir():
        raise OutputExistsError(
            f"{path}: a file is in the way; austeer writes a {kind} directory here and never replaces a file "
            "(remove it or choose another path)"
        )
    reason = None if force else _foreign(path, kind)
    if reason is not None:
        raise OutputExistsError(f"{path}: {reason}; refusing to replace it (--force replaces it)")


def check_file_target(path: str | Path) -> None:
    """Raise :class:`OutputExistsError` when a directory stands where the file ``path`` goes.

    Example:
        >>> import tempfile
        >>> check_file_target(Path(tempfile.mkdtemp()) / "report.html")   # free
    """
    path = Path(path)
    check_parents(path)
    if path.is_dir():
        raise OutputExistsError(f"{path}: is a directory; expected a file name to write")


# -- writing


@functools.lru_cache(maxsize=1)
def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Atomically trade the names of ``a`` and ``b``; False where the system cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap(new: Path, target: Path) -> None:
    """Put the directory ``new`` in the place of ``target``; ``target`` names the old or the new one throughout."""
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old output
        return
    old = _sibling(target, "old", secrets.token_hex(4))
    target.rename(old)
    new.rename(target)  # a kill before this line: :func:`recover` renames ``old`` back
    _remove(old)


def atomic_write_dir(
    directory: str | Path, write: Callable[[Path], Any], kind: str = "output", force: bool = False
) -> Path:
    """Build a ``kind`` directory with ``write(tmp)`` in a sibling temp dir, then swap it into place.

    Refuses (:class:`OutputExistsError`) to replace anything but austeer's own ``kind`` output unless
    ``force``; see the module docstring for the swap and the marker.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()) / "figs"
        >>> _ = atomic_write_dir(d, lambda tmp: (tmp / "a.png").write_bytes(b"png"), kind="figures")
        >>> sorted(p.name for p in d.iterdir())
        ['.austeer', 'a.png']
    """
    directory = Path(directory)
    check_parents(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover(directory)
    check_replaceable(directory, kind, force)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-{os.getpid()}-{_host()}-", dir=directory.parent))
    try:
        write(tmp)
        files = sorted(p.name for p in tmp.iterdir())
        (tmp / MARKER).write_text(json.dumps({"kind": kind, "files": files}) + "\n", encoding="utf-8")
        if directory.exists() or directory.is_symlink():
            check_replaceable(directory, kind, force)  # again: the write may have taken a while
            _swap(tmp, directory)
        else:
            tmp.rename(directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _atomic_file(path: Path, fill: Callable[[int, str], None]) -> None:
    path = Path(path)
    check_file_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-{_host()}-", suffix="", dir=path.parent)
    try:
        fill(fd, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a UTF-8 text file through a temp file and ``os.replace`` (never half-written).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "a.txt"
        >>> atomic_write_text(p, "hi"); p.read_text()
        'hi'
    """

    def fill(fd: int, tmp: str) -> None:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)

    _atomic_file(Path(path), fill)


def write_between(path: str | Path, begin: str, end: str, text: str) -> None:
    r"""Replace what lies between the marker lines ``begin`` and ``end`` of a text file with ``text``,
    atomically (the markers are appended when missing; the rest of the file is kept as it is).

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "doc.md"
        >>> _ = f.write_text("# Title\n<!-- B -->\nold\n<!-- E -->\nkept\n")
        >>> write_between(f, "<!-- B -->", "<!-- E -->", "new")
        >>> f.read_text()
        '# Title\n<!-- B -->\nnew\n<!-- E -->\nkept\n'
    """
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if begin not in old:
        old += f"\n{begin}\n{end}\n"
    head, rest = old.split(begin, 1)
    tail = rest.split(end, 1)[1] if end in rest else "\n"
    atomic_write_text(path, f"{head}{begin}\n{text}\n{end}{tail}")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a binary file (a PNG) through a temp file and ``os.replace`` (never half-written).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "a.bin"
        >>> atomic_write_bytes(p, b"\\x00"); p.read_bytes()
        b'\\x00'
    """

    def fill(fd: int, tmp: str) -> None:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)

    _atomic_file(Path(path), fill)


def atomic_save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Save ``tensors`` as safetensors through a temp file and ``os.replace``.

    Example:
        >>> import tempfile
        >>> import torch
        >>> p = Path(tempfile.mkdtemp()) / "t.safetensors"
        >>> atomic_save_tensors(p, {"x": torch.zeros(2)}); p.exists()
        True
    """

    from safetensors.torch import save_file

    def fill(fd: int, tmp: str) -> None:
        os.close(fd)
        save_file(tensors, tmp)

    _atomic_file(Path(path), fill)


def atomic_write_file(
    path: str | Path, write: Callable[[Path], Any], owned: Callable[[Path], bool], force: bool = False
) -> Path:
    """Write a file with ``write(tmp)`` (a sibling temp path), then ``os.replace`` it into place.

    An existing file at ``path`` is replaced only when ``owned(path)`` says austeer wrote it (the GGUF
    exports carry an ``austeer.*`` key), unless ``force``; a directory there is always refused.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "notes.bin"
        >>> _ = p.write_bytes(b"theirs")
        >>> try:
        ...     atomic_write_file(p, lambda tmp: tmp.write_bytes(b"ours"), owned=lambda _: False)
        ... except OutputExistsError:
        ...     print("refused")
        refused
        >>> _ = atomic_write_file(p, lambda tmp: tmp.write_bytes(b"ours"), owned=lambda _: False, force=True)
        >>> p.read_bytes()
        b'ours'
    """
    path = Path(path)
    check_file_target(path)
    if (path.exists() or path.is_symlink()) and not force and not owned(path):
        raise OutputExistsError(
            f"{path}: this file was not written by austeer; refusing to replace it (--force replaces it)"
        )

    def fill(fd: int, tmp: str) -> None:
        os.close(fd)
        write(Path(tmp))

    _atomic_file(path, fill)
    return path
