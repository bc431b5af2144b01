"""Writing outputs safely, and reading JSONL: austeer never deletes what it did not write.

**Files** (``atomic_write_text``, ``atomic_save_tensors``, :func:`write_output`) are written to a sibling
temp file and moved into place with ``os.replace``: the target is the old or the new file at every
instant, never half written. A directory standing where a file goes is refused.

**Directories** (a spec, an exported checkpoint, a report's figure folder) are built in a sibling
temp directory ``.austeer.tmp.<name hash>.PID.<host hash>.XXXXXXXX`` (short, whatever the name) by
``write(tmp)``, get a marker file ``.austeer`` (JSON: the kind of output and the names written), and
are then swapped into place:

- on Linux, ``renameat2(RENAME_EXCHANGE)`` trades the names of the old and the new directory in one
  atomic step, so ``NAME`` is the old or the new output at every instant; the old one, now under the
  temp name, is deleted afterwards;
- where that is not available (other systems, some filesystems), the old directory is renamed to
  ``.austeer.old.<name hash>.PID.<host hash>.XXXXXXXX`` and the new one into place. A run killed
  between those two renames leaves the old output under the backup name; the next write to ``NAME``
  (or :func:`recover`) renames it back first, so the old output is never lost.

**Paths and failures.** :func:`check_output_path` refuses, before any work, the current directory or
one above it, a name longer than the file system takes and a folder this process cannot write into
(:class:`OutputPathError`). An :class:`OSError` while writing (a full disk) becomes an
:class:`OutputWriteError` naming the output; the temp sibling is removed and the old output is left
as it was.

**Ownership.** An existing directory is replaced only when it is empty, or its marker names the same
kind of output and it holds nothing but what the marker lists, or it is a spec or export of an older
austeer (recognised by its exact files). An existing *file* is replaced only when it carries austeer's
signature ``austeer:<kind>`` (:func:`signature`) in its first 4 KiB: a ``"written_by"`` key first in
JSON, a ``generator`` meta tag in HTML, a ``Software`` text chunk in PNG, ``__metadata__`` in
safetensors (formats that cannot carry it pass their own ``owned`` test, e.g. GGUF's ``austeer.*``
keys). Anything else raises :class:`OutputExistsError` naming the path, unless ``force=True`` (the
CLI's ``--force``). Refused even with ``force``: a *file* where a directory goes and a directory where a
file goes (a typo should not cost a file), and an output that is one of the command's inputs (or, for a
directory, holds one).

**Permissions.** Outputs get the modes any new file (``0o666``) or directory (``0o777``) gets under the
process's :func:`umask`, not the private ``0600``/``0700`` of the temp files they are built in, so
another user (a serving engine) reads them as it reads anything else one writes.

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
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from austeer.errors import UserError

if TYPE_CHECKING:
    import torch

#: the marker file in every directory austeer writes
MARKER = ".austeer"

_SIGNATURE_BYTES = 4096  # a single file's signature (see :func:`signed`) is looked for in its first 4 KiB

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


class OutputPathError(OSError):
    """austeer cannot write an output at this path (read-only, a name too long, the current directory)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class OutputWriteError(OSError):
    """Writing an output failed (a full disk, an I/O error); the old output, if any, is left as it was."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def umask() -> int:
    """The process's umask, read from ``/proc/self/status`` (Linux) without changing it; elsewhere it is set
    and restored at once (``os.umask`` has no read-only form).

    Example:
        >>> 0 <= umask() <= 0o777
        True
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _public(tree: Path) -> None:
    """Give ``tree`` and everything in it the modes new files and directories get under the umask (``mkdtemp``
    makes the directory 0700, and some writers, safetensors' among them, make their files 0600)."""
    mask = umask()
    for root, dirs, files in os.walk(tree):  # links are not followed (nor changed)
        for name, bits in [*((n, 0o666) for n in files), *((n, 0o777) for n in dirs)]:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, bits & ~mask)
    os.chmod(tree, 0o777 & ~mask)


def _os_error(exc: BaseException) -> OSError | None:
    """The :class:`OSError` behind ``exc``: itself, or the one a safetensors writer reports as ``(os error N)``
    (safetensors raises its own error type for a full disk); None for austeer's own refusals and other errors."""
    if isinstance(exc, OutputExistsError | OutputPathError):
        return None
    if isinstance(exc, OSError):
        return exc
    found = re.search(r"\(os error (\d+)\)", str(exc)) if type(exc).__name__ == "SafetensorError" else None
    return OSError(int(found.group(1)), os.strerror(int(found.group(1)))) if found else None


def _write_error(path: Path, existed: bool, exc: OSError) -> OutputWriteError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    kept = "the existing output is unchanged" if existed else "nothing was written"
    return OutputWriteError(f"{path}: could not write it ({reason}); {kept}")


# -- reading


def iter_jsonl(path: str | Path, kind: str, error: type[ValueError] = UserError) -> Iterator[tuple[int, Any]]:
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


def json_sha256(obj: Any) -> str:
    """The SHA-256 of ``obj`` as JSON with sorted keys: one identity for settings, pairs and texts that runs compare.

    Example:
        >>> json_sha256({"b": 1, "a": [2]}) == json_sha256({"a": [2], "b": 1})
        True
    """
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# -- leftovers of killed runs


def _host() -> str:
    """The host name as older austeer versions put it in their temp names (see :func:`recover`)."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _short(text: str, size: int) -> str:
    return hashlib.blake2b(os.fsencode(text), digest_size=size).hexdigest()


def _prefix(path: Path, role: str) -> str:
    """``.austeer.<role>.<hash of the name>.<pid>.<hash of the host>.``: at most 38 bytes whatever the name,
    so a temp sibling fits wherever the output's own name does."""
    return f".austeer.{role}.{_short(path.name, 4)}.{os.getpid()}.{_short(_host(), 3)}."


def _sibling(path: Path, role: str, token: str) -> Path:
    return path.with_name(_prefix(path, role) + token)


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
    tail = r"[A-Za-z0-9_]{8}"
    patterns = [
        rf"\.austeer\.(tmp|old)\.{_short(path.name, 4)}\.(\d+)\.{_short(_host(), 3)}\.{tail}",
        rf"\.{re.escape(path.name)}\.(tmp|old)-(\d+)-{re.escape(_host())}-{tail}",  # older versions' names
    ]
    for sibling in sorted(path.parent.iterdir()):
        match = next((m for p in patterns if (m := re.fullmatch(p, sibling.name))), None)
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


def _name_max(directory: Path) -> int:
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no answer
        return 255


def _lexists(path: Path) -> bool:
    """Whether anything (a link too) is at ``path``; a name too long for the file system is not there."""
    try:
        os.lstat(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
            return False
        raise
    return True


def check_output_path(path: str | Path) -> None:
    """Raise :class:`OutputPathError` (one line) unless austeer can create an output at ``path``.

    Checked before any work: ``path`` is not the current directory or one above it; every name still
    to be created fits the file system (``NAME_MAX``, 255 bytes on most); the nearest existing folder
    above ``path`` is a directory that this process may write into (not read-only, not denied).

    Example:
        >>> try:
        ...     check_output_path(".")
        ... except OutputPathError as exc:
        ...     print(str(exc).split(": ", 1)[1])
        is the current directory or one above it; austeer never replaces it (choose a new directory)
    """
    path = Path(path)
    absolute = Path(os.path.abspath(path))
    try:
        here = Path.cwd()
    except OSError:  # the current directory was deleted
        here = None
    if here is not None:
        for candidate in {absolute, Path(os.path.realpath(path))}:
            if candidate == here or candidate in here.parents:
                raise OutputPathError(
                    f"{path}: is the current directory or one above it; austeer never replaces it "
                    "(choose a new directory)"
                )
    existing = absolute.parent
    while not _lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(
            f"{path}: {existing} is a file, not a directory, so nothing can be written inside it; choose another path"
        )
    limit = _name_max(existing)
    for name in absolute.relative_to(existing).parts:
        size = len(os.fsencode(name))
        if size > limit:
            shown = name if len(name) <= 40 else f"{name[:20]}...{name[-12:]}"
            raise OutputPathError(f"{path}: the name {shown!r} is {size} bytes long; the file system allows {limit}")
    if not os.access(existing, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        try:
            read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        except (OSError, AttributeError):
            read_only = False
        why = "on a read-only file system" if read_only else "not writable (permission denied)"
        raise OutputPathError(f"{path}: cannot write there: {existing} is {why}")


def _same_or_inside(path: Path, other: str | Path, inside: bool) -> bool:
    """``other`` is ``path`` (the same file, also through links) or, with ``inside``, lies under it."""
    try:
        if os.path.samefile(path, other):
            return True
    except OSError:
        pass
    mine, theirs = os.path.realpath(path), os.path.realpath(other)
    return mine == theirs or (inside and theirs.startswith(mine.rstrip(os.sep) + os.sep))


def _check_not_input(path: Path, inputs: Iterable[str | Path | None], directory: bool) -> None:
    for given in inputs:
        if given is not None and str(given) and _same_or_inside(path, given, inside=directory):
            what = "is" if _same_or_inside(path, given, inside=False) else "holds"
            raise OutputExistsError(
                f"{path}: {what} an input of this command ({given}); refusing to write over it (even with --force)"
            )


def check_replaceable(
    path: str | Path, kind: str, force: bool = False, inputs: Iterable[str | Path | None] = ()
) -> None:
    """Raise :class:`OutputExistsError` unless a ``kind`` directory may be written at ``path``.

    Free when ``path`` does not exist; an existing directory must be austeer's own output of the same
    kind (or ``force``); a file is always refused, and so is a directory that is or holds one of
    ``inputs`` (the command's input files), and a path :func:`check_output_path` refuses. Call it
    before long work to fail early.

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
    check_output_path(path)
    _check_not_input(path, inputs, directory=True)
    if not _existing_dir(path, f"a {kind} directory"):
        return
    reason = None if force else _foreign(path, kind)
    if reason is not None:
        raise OutputExistsError(f"{path}: {reason}; refusing to replace it (--force replaces it)")


def _existing_dir(path: Path, what: str) -> bool:
    """Whether ``path`` exists as a directory (False: absent); a file or link there is refused: austeer writes
    ``what`` there and never replaces a file."""
    if not (path.exists() or path.is_symlink()):
        return False
    if path.is_symlink() or not path.is_dir():
        raise OutputExistsError(
            f"{path}: a file is in the way; austeer writes {what} here and never replaces a file "
            "(remove it or choose another path)"
        )
    return True


def check_output_dir(path: str | Path, names: Iterable[str], force: bool = False) -> None:
    """Raise :class:`OutputExistsError` unless a command may write its outputs ``names`` into the directory ``path``.

    For a command whose ``--out`` is a directory of its own files (``sweep``, ``tune``, ``compare``): free
    when ``path`` does not exist or holds only ``names`` (an earlier run's outputs, each checked on its own
    by :func:`check_file_output` or :func:`check_replaceable`) and austeer's temp siblings. Anything else
    there is a folder of someone else's: refused unless ``force`` (which writes into it, keeping what is
    there). A file at ``path`` is refused even with ``force``. Call it before long work to fail early.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> (d / "notes.txt").write_text("keep")
        4
        >>> try:
        ...     check_output_dir(d, ["sweep.json"])
        ... except OutputExistsError as exc:
        ...     print(str(exc).split(": ", 1)[1])
        it holds 'notes.txt', which austeer did not write; refusing to write into it (--force writes into it)
    """
    path = Path(path)
    check_output_path(path)
    if not _existing_dir(path, "a directory of outputs"):
        return
    if force:
        return
    own = set(names)
    extra = sorted(p.name for p in path.iterdir() if p.name not in own and not p.name.startswith(".austeer."))
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise OutputExistsError(
            f"{path}: it holds {extra[0]!r}{more}, which austeer did not write; refusing to write into it "
            "(--force writes into it)"
        )


def signature(kind: str) -> str:
    """The text that marks a single file as austeer's ``kind`` output (see :func:`signed`).

    Example:
        >>> signature("eval")
        'austeer:eval'
    """
    return f"austeer:{kind}"


def signed(path: str | Path, kind: str) -> bool:
    """Whether the file ``path`` carries :func:`signature` ``(kind)`` in its first 4 KiB.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "e.json"
        >>> _ = p.write_text(signed_json({"a": 1}, "eval"))
        >>> signed(p, "eval"), signed(p, "compare")
        (True, False)
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SIGNATURE_BYTES)
    except OSError:
        return False
    return signature(kind).encode() in head


def signed_json(obj: dict[str, Any], kind: str, indent: int | None = 2, allow_nan: bool = True) -> str:
    """``obj`` as JSON text with austeer's signature as its first key ``"written_by"`` (and a final newline).

    Example:
        >>> signed_json({"a": 1}, "eval", indent=None)
        '{"written_by": "austeer:eval", "a": 1}\\n'
    """
    return json.dumps({"written_by": signature(kind), **obj}, indent=indent, allow_nan=allow_nan, default=str) + "\n"


def check_file_target(path: str | Path) -> None:
    """Raise :class:`OutputExistsError` when a directory stands where the file ``path`` goes.

    Example:
        >>> import tempfile
        >>> check_file_target(Path(tempfile.mkdtemp()) / "report.html")   # free
    """
    path = Path(path)
    check_output_path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path}: is a directory; expected a file name to write")


def check_file_output(
    path: str | Path,
    kind: str,
    force: bool = False,
    inputs: Iterable[str | Path | None] = (),
    owned: Callable[[Path], bool] | None = None,
) -> None:
    """Raise :class:`OutputExistsError` unless the single file ``path`` may be written as ``kind`` output.

    Refused always: a directory at ``path``, ``path`` being one of ``inputs``, a path
    :func:`check_output_path` refuses. Refused unless ``force``: an existing file that austeer did not
    write (``owned(path)``, by default :func:`signed`).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "notes.json"
        >>> _ = p.write_text("{}")
        >>> try:
        ...     check_file_output(p, "eval")
        ... except OutputExistsError as exc:
        ...     print(str(exc).split(": ", 1)[1])
        this file is not austeer's eval output; refusing to replace it (--force replaces it)
    """
    path = Path(path)
    check_output_path(path)  # first: a name too long cannot even be looked at
    check_file_target(path)
    _check_not_input(path, inputs, directory=False)
    is_owned = owned if owned is not None else (lambda p: signed(p, kind))
    if (path.exists() or path.is_symlink()) and not force and not is_owned(path):
        raise OutputExistsError(
            f"{path}: this file is not austeer's {kind} output; refusing to replace it (--force replaces it)"
        )


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
    try:
        new.rename(target)  # a kill before this line: :func:`recover` renames ``old`` back
    except BaseException:
        old.rename(target)
        raise
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
    check_replaceable(directory, kind, force)  # the path first: nothing is created for a bad one
    existed = directory.exists()
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        recover(directory)
        check_replaceable(directory, kind, force)
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(directory, "tmp"), dir=directory.parent))
    except OSError as exc:
        if (cause := _os_error(exc)) is None:
            raise
        raise _write_error(directory, existed, cause) from exc
    try:
        write(tmp)
        files = sorted(p.name for p in tmp.iterdir())
        (tmp / MARKER).write_text(json.dumps({"kind": kind, "files": files}) + "\n", encoding="utf-8")
        _public(tmp)
        if directory.exists() or directory.is_symlink():
            check_replaceable(directory, kind, force)  # again: the write may have taken a while
            _swap(tmp, directory)
        else:
            tmp.rename(directory)
    except Exception as exc:
        if (cause := _os_error(exc)) is None:
            raise
        raise _write_error(directory, existed, cause) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _atomic_file(path: Path, fill: Callable[[int, str], None]) -> None:
    """Write ``path`` through ``fill(fd, tmp)`` on a sibling temp file and ``os.replace``; an :class:`OSError`
    on the way (a full disk) is an :class:`OutputWriteError` naming ``path``, with ``path`` left as it was."""
    path = Path(path)
    check_output_path(path)
    check_file_target(path)
    existed = path.exists()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        recover(path)
        fd, tmp = tempfile.mkstemp(prefix=_prefix(path, "tmp"), dir=path.parent)
        fill(fd, tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it 0600: the mode any new file would get
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if (cause := _os_error(exc)) is None:
            raise
        raise _write_error(path, existed, cause) from exc


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


def write_output(
    path: str | Path,
    data: str | bytes,
    kind: str,
    force: bool = False,
    inputs: Iterable[str | Path | None] = (),
    owned: Callable[[Path], bool] | None = None,
) -> Path:
    """Write the single-file ``kind`` output ``path`` (text as UTF-8) atomically, after :func:`check_file_output`.

    ``data`` should carry :func:`signature` ``(kind)`` (see :func:`signed_json`) so that the next run may
    replace it; formats that cannot carry it pass their own ``owned`` test.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "e.json"
        >>> _ = write_output(p, signed_json({"a": 1}, "eval"), "eval")
        >>> _ = write_output(p, signed_json({"a": 2}, "eval"), "eval")   # its own output: replaced
        >>> _ = p.write_text("{}")                                       # edited by someone else
        >>> try:
        ...     write_output(p, signed_json({"a": 3}, "eval"), "eval")
        ... except OutputExistsError:
        ...     print("refused")
        refused
    """
    path = Path(path)
    check_file_output(path, kind, force, inputs, owned)
    payload = data.encode("utf-8") if isinstance(data, str) else data

    def fill(fd: int, tmp: str) -> None:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)

    _atomic_file(path, fill)
    return path


def atomic_write_file(
    path: str | Path,
    write: Callable[[Path], Any],
    owned: Callable[[Path], bool],
    force: bool = False,
    inputs: Iterable[str | Path | None] = (),
) -> Path:
    """Write a file with ``write(tmp)`` (a sibling temp path), then ``os.replace`` it into place.

    An existing file at ``path`` is replaced only when ``owned(path)`` says austeer wrote it (the GGUF
    exports carry an ``austeer.*`` key), unless ``force``; a directory there, or one of ``inputs``, is
    always refused (:func:`check_file_output`).

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
    check_file_output(path, "GGUF", force, inputs, owned)

    def fill(fd: int, tmp: str) -> None:
        os.close(fd)
        write(Path(tmp))

    _atomic_file(path, fill)
    return path
