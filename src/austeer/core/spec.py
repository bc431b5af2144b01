"""The steering spec: what is steered where, how strongly, for which model; saved atomically.

On disk a spec is a directory:

- ``steer.json``: model id and fingerprint, sites, alpha, number of pairs, the positions the gains act
  on (``"all"``, the paper's rule, or ``"last"``: see :data:`POSITIONS`), and the units as a list of
  ``{"site", "layer", "index", "beta"}`` ordered by decreasing ``|beta|`` (readable, diffable);
- ``scores.safetensors``: the full sign-count statistics of every scored site (``<site>.pos``,
  ``<site>.neg``, ``<site>.total``, ``<site>.squares``), so ``k`` can be changed without refitting.

No pickle is ever read or written.

Validation (one rule, every path). A spec is checked when it is built (:class:`SteerSpec`) and when it
is read (:func:`load`), and against the model each time it is applied (:meth:`SteerSpec.check_fits`,
which :mod:`austeer.core.steer` calls for hooks, fold, export and the per-row gains of ``batched`` and
``serve``):

- structure (built or read): ``alpha`` finite; every unit has a known site, integer ``layer`` and
  ``index`` >= 0 and a finite ``beta`` with every gain ``1 + alpha * beta`` finite in float32 (the dtype
  every path makes its gains in; :func:`check_gains_fit`); no unit twice; a fingerprint,
  when present, has ``family``, ``n_layers``, ``widths`` and a ``digest`` that matches them, and the
  units lie inside it;
- read from disk, in addition: the fingerprint is required, ``beta`` is a sign-consistency score in
  ``[-1, 1]`` (every saved spec is fitted; a spec built in code may hold any finite ``beta``; gains
  with no score behind them, such as the baselines', are :class:`~austeer.core.steer.Gain` s, not units),
  and the stored scores match the fingerprint's shapes and the number of pairs;
- against a model: the spec's fingerprint equals the model's (family, layers, widths, digest), and
  every unit lies in ``0..n_layers-1`` and ``0..width-1`` of the model.

Errors are :class:`SpecError` (a ``ValueError``) worded ``<file or "spec">: <field>: <problem>``.

Example:
    >>> import tempfile
    >>> from austeer.core.momentum import Unit
    >>> from austeer.core.spec import SteerSpec, load, make_fingerprint
    >>> fp = make_fingerprint("llama", 30, {"head": 576})
    >>> spec = SteerSpec(units=[Unit("head", 3, 17, -1.0)], alpha=5.0, model_id="m", fingerprint=fp)
    >>> d = tempfile.mkdtemp()
    >>> _ = spec.save(d)
    >>> load(d).units[0]
    Unit(site='head', layer=3, index=17, beta=-1.0)
    >>> SteerSpec(units=[Unit("head", -1, 17, 1.0)], alpha=5.0, fingerprint=fp)
    Traceback (most recent call last):
    ...
    austeer.core.spec.SpecError: spec: units[0].layer: -1 is out of range 0..29
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save_file
from torch import nn

from austeer.core.momentum import SignCounts, Unit, select
from austeer.core.sites import SITES, decoder_layers, family_of, site_width
from austeer.errors import UserError
from austeer.io import atomic_save_tensors, atomic_write_dir, atomic_write_text  # noqa: F401 (re-exported)

FORMAT_VERSION = 1
_STATS = ("pos", "neg", "total", "squares")

POSITIONS = ("all", "last")
"""Where the gains act. ``"all"`` (the paper's rule, the default): every token position, so the gains fold
into the weights. ``"last"``: only the last position of each forward pass (hooks only): the answer
position when a task scores the token after a prompt, and each new token when generating with a KV cache
(the prompt is read unsteered up to its last token)."""


SELECTIONS = ("sign", "attribution")
"""How the AUs were chosen. ``"sign"`` (the paper's rule, the default): sign consistency over the pairs, with
the sign counts stored so ``k`` can change without refitting. ``"attribution"``: the derivative of the pairs'
answer margin with respect to each AU's gain (:mod:`austeer.core.attribution`; no counts stored)."""


class SpecError(UserError):
    """A spec is malformed: the message is ``<file or "spec">: <field>: <what is wrong, what was expected>``."""


class SpecMismatchError(SpecError):
    """A spec was loaded onto a model it was not fitted for."""


def make_fingerprint(family: str, n_layers: int, widths: Mapping[str, int]) -> dict[str, Any]:
    """A model fingerprint: family, layer count, the width of every site, and a digest of the three.

    Example:
        >>> sorted(make_fingerprint("llama", 2, {"head": 8}))
        ['digest', 'family', 'n_layers', 'widths']
    """
    info = {"family": family, "n_layers": n_layers, "widths": dict(widths)}
    return {**info, "digest": _digest(info)}


def fingerprint(model: nn.Module) -> dict[str, Any]:
    """What a steering spec must match: family, layer count and the width of every site."""
    fam = family_of(model)
    widths = {}
    for site in SITES:
        try:
            widths[site] = site_width(model, site)
        except (ValueError, AttributeError):
            continue
    return make_fingerprint(fam, len(decoder_layers(model)), widths)


def _digest(info: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]


def _is_int(x: object) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


#: the largest pair count a spec can hold: its sign counts are int64
MAX_PAIRS = 2**63 - 1


def _is_pair_count(x: object) -> bool:
    return _is_int(x) and 0 <= int(x) <= MAX_PAIRS  # type: ignore[call-overload]


def _is_finite(x: object) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(x)


def first_overflow(values: Sequence[float], dtype: torch.dtype) -> int | None:
    """The position of the first of ``values`` that is not finite once rounded to ``dtype``, else ``None``.

    Example:
        >>> first_overflow([1.0, 7e4, 1e39], torch.float16), first_overflow([1.0, 1e39], torch.float32)
        (1, 1)
        >>> first_overflow([1.0, 3e38], torch.float32) is None
        True
    """
    if not values:
        return None
    bad = (~torch.isfinite(torch.tensor(values, dtype=torch.float64).to(dtype))).nonzero()
    return int(bad[0]) if len(bad) else None


def overflow_text(value: float, dtype: torch.dtype) -> str:
    """``<value>, not finite in <dtype> (largest finite value <max>)``: the end of every overflow message.

    Example:
        >>> overflow_text(8e38, torch.float32)
        '8e+38, not finite in float32 (largest finite value 3.403e+38)'
    """
    name = str(dtype).removeprefix("torch.")
    return f"{value:.4g}, not finite in {name} (largest finite value {torch.finfo(dtype).max:.4g})"


def check_gains_fit(units: Sequence[Unit], alpha: float, dtype: torch.dtype, where: str = "spec") -> None:
    """Raise :class:`SpecError` unless every gain ``1 + alpha * beta`` is finite in ``dtype``.

    Example:
        >>> check_gains_fit([Unit("head", 0, 1, 0.5)], 2e5, torch.float16)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        austeer.core.spec.SpecError: spec: alpha: ... = 1e+05, not finite in float16 (largest finite value 6.55e+04...
    """
    gains = [1.0 + alpha * u.beta for u in units]
    i = first_overflow(gains, dtype)
    if i is not None:
        u = units[i]
        name = "alpha" if abs(u.beta) <= 1 else f"units[{i}].beta"
        raise SpecError(
            f"{where}: {name}: the gain 1 + alpha * beta of units[{i}] ({u.site} layer {u.layer} index {u.index}) "
            f"is 1 + {alpha:g} * {u.beta:g} = {overflow_text(gains[i], dtype)}; steer with a smaller alpha"
        )


def check_fingerprint(fp: object, where: str = "spec") -> None:
    """Raise :class:`SpecError` unless ``fp`` is a complete fingerprint whose digest matches its fields.

    Example:
        >>> check_fingerprint({"family": "llama", "n_layers": 2, "widths": {"head": 8}, "digest": "0"})
        Traceback (most recent call last):
        ...
        austeer.core.spec.SpecError: spec: fingerprint.digest: '0' does not match family, n_layers and widths (edited?)
    """
    if not isinstance(fp, Mapping):
        raise SpecError(f"{where}: fingerprint: expected an object, found {type(fp).__name__}")
    for key in ("family", "n_layers", "widths", "digest"):
        if key not in fp:
            raise SpecError(f"{where}: fingerprint.{key}: missing")
    if not isinstance(fp["family"], str) or not fp["family"]:
        raise SpecError(f"{where}: fingerprint.family: expected a non-empty string, found {fp['family']!r}")
    if not _is_int(fp["n_layers"]) or fp["n_layers"] < 1:
        raise SpecError(f"{where}: fingerprint.n_layers: expected an integer >= 1, found {fp['n_layers']!r}")
    widths = fp["widths"]
    if not isinstance(widths, Mapping) or not widths:
        raise SpecError(f"{where}: fingerprint.widths: expected a non-empty object {{site: width}}, found {widths!r}")
    for site, width in widths.items():
        if site not in SITES:
            raise SpecError(f"{where}: fingerprint.widths: unknown site {site!r}; expected one of {', '.join(SITES)}")
        if not _is_int(width) or width < 1:
            raise SpecError(f"{where}: fingerprint.widths.{site}: expected an integer >= 1, found {width!r}")
    if not isinstance(fp["digest"], str):
        raise SpecError(f"{where}: fingerprint.digest: expected a string, found {type(fp['digest']).__name__}")
    info = {"family": fp["family"], "n_layers": fp["n_layers"], "widths": dict(widths)}
    if fp["digest"] != _digest(info):
        raise SpecError(
            f"{where}: fingerprint.digest: {fp['digest']!r} does not match family, n_layers and widths (edited?)"
        )


def check_units(
    units: Sequence[Unit],
    alpha: float,
    where: str = "spec",
    beta_range: bool = False,
    fp: Mapping[str, Any] | None = None,
) -> None:
    """Raise :class:`SpecError` unless ``alpha`` and every unit are well formed (see the module docstring).

    ``beta_range``: also require ``beta`` in ``[-1, 1]`` (a fitted sign-consistency score).
    ``fp``: a (checked) fingerprint the units must lie inside.

    Example:
        >>> check_units([Unit("head", 0, 1, 0.5), Unit("head", 0, 1, 0.5)], 2.0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        austeer.core.spec.SpecError: spec: units[1]: head layer 0 index 1 is listed twice (also units[0]); ...
    """
    if not _is_finite(alpha):
        raise SpecError(f"{where}: alpha: expected a finite number, found {alpha!r}")
    seen: dict[tuple[str, int, int], int] = {}
    for i, u in enumerate(units):
        if u.site not in SITES:
            raise SpecError(f"{where}: units[{i}].site: unknown site {u.site!r}; expected one of {', '.join(SITES)}")
        for name in ("layer", "index"):
            value = getattr(u, name)
            if not _is_int(value) or (fp is None and value < 0):
                raise SpecError(f"{where}: units[{i}].{name}: expected an integer >= 0, found {value!r}")
        if fp is not None:
            check_in_range([u], fp, where, first=i)
        if not _is_finite(u.beta):
            raise SpecError(f"{where}: units[{i}].beta: expected a finite number, found {u.beta!r}")
        if beta_range and not -1.0 <= u.beta <= 1.0:
            raise SpecError(f"{where}: units[{i}].beta: {u.beta!r} is out of range [-1, 1]")
        key = (u.site, int(u.layer), int(u.index))
        if key in seen:
            raise SpecError(
                f"{where}: units[{i}]: {u.site} layer {u.layer} index {u.index} is listed twice "
                f"(also units[{seen[key]}]); each unit may appear once"
            )
        seen[key] = i
    check_gains_fit(units, alpha, torch.float32, where)  # every path makes its gains in float32 first


class Located(Protocol):
    """Anything at one AU: a :class:`~austeer.core.momentum.Unit`, a :class:`~austeer.core.steer.Gain`."""

    @property
    def site(self) -> str: ...

    @property
    def layer(self) -> int: ...

    @property
    def index(self) -> int: ...


def check_in_range(units: Sequence[Located], fp: Mapping[str, Any], where: str = "spec", first: int = 0) -> None:
    """Raise :class:`SpecError` unless every unit lies inside the layers and site widths of fingerprint ``fp``.

    ``first``: the position of ``units[0]`` in the spec (for the message).
    """
    n_layers, widths = fp["n_layers"], fp["widths"]
    for i, u in enumerate(units, start=first):
        if u.site not in widths:
            raise SpecError(f"{where}: units[{i}].site: {u.site!r} is not a site of this model ({', '.join(widths)})")
        if not 0 <= u.layer < n_layers:
            raise SpecError(f"{where}: units[{i}].layer: {u.layer} is out of range 0..{n_layers - 1}")
        if not 0 <= u.index < widths[u.site]:
            raise SpecError(
                f"{where}: units[{i}].index: {u.index} is out of range 0..{widths[u.site] - 1} for site {u.site!r}"
            )


def _check_sites(sites: Sequence[Any], units: Sequence[Unit], where: str) -> None:
    for i, site in enumerate(sites):
        if site not in SITES:
            raise SpecError(f"{where}: sites[{i}]: unknown site {site!r}; expected one of {', '.join(SITES)}")
    if sites:
        for i, u in enumerate(units):
            if u.site not in sites:
                raise SpecError(f"{where}: units[{i}].site: {u.site!r} is not one of the spec's sites {list(sites)}")


@dataclass
class SteerSpec:
    """Selected AUs with their scores, a global strength ``alpha``, and the model they belong to.

    Checked when built (see the module docstring); :meth:`check_fits` checks it against a model.
    """

    units: list[Unit]
    alpha: float
    model_id: str = ""
    fingerprint: dict[str, Any] = field(default_factory=dict)
    n_pairs: int = 0
    sites: list[str] = field(default_factory=list)
    scores: dict[str, SignCounts] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    positions: str = "all"
    selection: str = "sign"
    path: str = field(default="", compare=False, repr=False)  # the steer.json it was read from (for messages)

    def __post_init__(self) -> None:
        self.validate()
        if not self.sites:
            self.sites = sorted({u.site for u in self.units})

    def validate(self, where: str = "spec", beta_range: bool = False) -> None:
        """Raise :class:`SpecError` unless the spec is well formed and its units lie inside its own fingerprint."""
        if self.fingerprint:
            check_fingerprint(self.fingerprint, where)
        check_units(self.units, self.alpha, where, beta_range, self.fingerprint or None)
        _check_sites(self.sites, self.units, where)
        if not _is_pair_count(self.n_pairs):
            raise SpecError(f"{where}: n_pairs: expected an integer from 0 to 2**63 - 1, found {self.n_pairs!r}")
        if self.positions not in POSITIONS:
            raise SpecError(f"{where}: positions: expected one of {', '.join(POSITIONS)}, found {self.positions!r}")
        if self.selection not in SELECTIONS:
            raise SpecError(f"{where}: selection: expected one of {', '.join(SELECTIONS)}, found {self.selection!r}")

    @property
    def k(self) -> int:
        return len(self.units)

    def gains(self, alpha: float | None = None) -> list[tuple[Unit, float]]:
        """``(unit, gamma)`` with ``gamma = alpha * beta``; the activation is multiplied by ``1 + gamma``.

        Example:
            >>> SteerSpec([Unit("head", 0, 1, 0.5)], alpha=2.0).gains(float("nan"))
            Traceback (most recent call last):
            ...
            austeer.core.spec.SpecError: spec: alpha: expected a finite number, found nan
        """
        a = self.alpha if alpha is None else alpha
        if alpha is not None:
            check_units(self.units, a)  # an override: "spec: alpha: ..." (the file's own alpha is not at fault)
        return [(u, a * u.beta) for u in self.units]

    def with_k(self, k: int) -> SteerSpec:
        """The same fit with the top ``k`` AUs (needs the stored scores)."""
        if not self.scores:
            why = " (attribution specs keep none)" if self.selection == "attribution" else ""
            where = Path(self.path).parent if self.path else "spec"
            raise UserError(f"{where}: this spec has no stored scores (scores.safetensors){why}; refit to change k")
        return replace(self, units=select(self.scores, k))

    def with_alpha(self, alpha: float) -> SteerSpec:
        return replace(self, alpha=float(alpha))

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model_id": self.model_id,
            "fingerprint": self.fingerprint,
            "sites": self.sites,
            "alpha": self.alpha,
            "k": self.k,
            "n_pairs": self.n_pairs,
            "positions": self.positions,
            "selection": self.selection,
            "info": self.info,
            "units": [{"site": u.site, "layer": u.layer, "index": u.index, "beta": u.beta} for u in self.units],
        }

    def save(self, directory: str | Path, force: bool = False) -> Path:
        """Write ``steer.json`` and ``scores.safetensors`` into ``directory``, atomically.

        An existing ``directory`` is replaced only when it is a spec austeer wrote (else
        :class:`~austeer.io.OutputExistsError`), unless ``force``.
        """
        tensors = {}
        for site, c in self.scores.items():
            tensors.update(
                {f"{site}.pos": c.pos, f"{site}.neg": c.neg, f"{site}.total": c.total, f"{site}.squares": c.squares}
            )
        text = json.dumps(self.to_json(), indent=2, allow_nan=False)

        def write(tmp: Path) -> None:
            (tmp / "steer.json").write_text(text + "\n", encoding="utf-8")
            if tensors:
                save_file(tensors, str(tmp / "scores.safetensors"), metadata={"n_pairs": str(self.n_pairs)})

        return atomic_write_dir(Path(directory), write, kind="spec", force=force)

    def check_fits(self, fingerprint: dict[str, Any]) -> None:
        """Raise unless this spec can steer the model of ``fingerprint`` (see the module docstring).

        :class:`SpecMismatchError` when the spec was fitted on another model; :class:`SpecError` when a
        unit lies outside the model's layers or site widths.
        """
        mine = self.fingerprint
        if mine:
            if mine.get("family") != fingerprint.get("family"):
                raise SpecMismatchError(
                    f"spec was fitted on a {mine.get('family')!r} model ({self.model_id}), "
                    f"but this model is {fingerprint.get('family')!r}"
                )
            if mine.get("n_layers") != fingerprint.get("n_layers"):
                raise SpecMismatchError(
                    f"spec expects {mine.get('n_layers')} layers, the model has {fingerprint.get('n_layers')}"
                )
            have_widths = fingerprint.get("widths", {})
            for site in sorted({*self.sites, *mine.get("widths", {}), *have_widths}, key=SITES.index):
                want, have = mine.get("widths", {}).get(site), have_widths.get(site)
                if want != have:
                    raise SpecMismatchError(f"spec expects site {site!r} of width {want}, the model's is {have}")
            if "digest" in fingerprint and mine.get("digest") != fingerprint["digest"]:
                raise SpecMismatchError(
                    f"spec fingerprint digest {mine.get('digest')!r} differs from the model's {fingerprint['digest']!r}"
                )
        check_in_range(self.units, fingerprint)


def _field(obj: Mapping[str, Any], key: str, where: str, check: Any, expected: str, default: Any = ...) -> Any:
    if key not in obj:
        if default is ...:
            raise SpecError(f"{where}: {key}: missing (expected {expected})")
        return default
    value = obj[key]
    if not check(value):
        raise SpecError(f"{where}: {key}: expected {expected}, found {value!r}"[:300])
    return value


def _all_finite(value: Any) -> bool:
    """No NaN or infinity anywhere in a parsed JSON ``value`` (Python's JSON reader accepts both)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return False
        stack.extend(v.values() if isinstance(v, dict) else v if isinstance(v, list) else ())
    return True


def _read_json(path: Path, data: bytes) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:  # integers over the digit limit, absurd nesting
        raise SpecError(f"{path}: invalid JSON ({type(exc).__name__}: {str(exc)[:100]})") from None


def _unit(u: Any, i: int, where: str) -> Unit:
    if not isinstance(u, Mapping):
        raise SpecError(f"{where}: units[{i}]: expected an object with site, layer, index, beta")
    site = _field(u, "site", f"{where}: units[{i}]", lambda v: isinstance(v, str), "a site name")
    layer = _field(u, "layer", f"{where}: units[{i}]", _is_int, "an integer >= 0")
    index = _field(u, "index", f"{where}: units[{i}]", _is_int, "an integer >= 0")
    beta = _field(u, "beta", f"{where}: units[{i}]", _is_finite, "a finite number in [-1, 1]")
    return Unit(site, layer, index, float(beta))


def _scores(path: Path, data: bytes, fp: Mapping[str, Any], n_pairs: int) -> dict[str, SignCounts]:
    """The sign counts in ``data`` (``path``), checked against the fingerprint's shapes and ``n_pairs``."""
    try:
        tensors = load_tensors(data)
    except Exception as exc:  # safetensors raises its own error types for every kind of corrupt file
        raise SpecError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {str(exc)[:100]})") from None
    by_site: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        site, _, stat = key.partition(".")
        if site not in SITES or stat not in _STATS:
            raise SpecError(f"{path}: {key}: unexpected tensor (expected <site>.{{{','.join(_STATS)}}})")
        by_site.setdefault(site, {})[stat] = t
    scores = {}
    for site in sorted(by_site, key=SITES.index):
        stats = by_site[site]
        if site not in fp["widths"]:
            raise SpecError(f"{path}: {site}: site not in the fingerprint's widths ({', '.join(fp['widths'])})")
        shape = (fp["n_layers"], fp["widths"][site])
        for stat in _STATS:
            if stat not in stats:
                raise SpecError(f"{path}: {site}.{stat}: missing (expected {', '.join(f'{site}.{s}' for s in _STATS)})")
            t, dtype = stats[stat], torch.int64 if stat in ("pos", "neg") else torch.float64
            if tuple(t.shape) != shape or t.dtype != dtype:
                raise SpecError(
                    f"{path}: {site}.{stat}: expected {dtype} of shape {list(shape)}, found {t.dtype} {list(t.shape)}"
                )
        pos, neg = stats["pos"], stats["neg"]
        if bool((pos < 0).any() | (neg < 0).any() | (pos + neg > n_pairs).any()):
            raise SpecError(f"{path}: {site}.pos/neg: counts must be >= 0 with pos + neg <= n_pairs = {n_pairs}")
        if not bool(torch.isfinite(stats["total"]).all() & torch.isfinite(stats["squares"]).all()):
            raise SpecError(f"{path}: {site}.total/squares: expected finite sums")
        scores[site] = SignCounts(pos, neg, stats["total"], stats["squares"], n_pairs)
    return scores


#: how often :func:`load` reads a spec directory that another process replaces meanwhile before it gives up
LOAD_TRIES = 8


def _read_file(directory: Path, name: str, dir_fd: int | None) -> bytes | None:
    """The bytes of ``directory/name`` (through ``dir_fd`` when given), None when there is no such file."""
    path = directory / name
    try:
        fd = os.open(name if dir_fd is not None else path, os.O_RDONLY, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    with os.fdopen(fd, "rb") as fh:
        try:
            return fh.read()
        except IsADirectoryError:
            raise SpecError(f"{path}: is a directory; expected a file") from None


def _same_directory(directory: Path, dir_fd: int) -> bool:
    try:
        now, then = os.stat(directory), os.fstat(dir_fd)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (then.st_dev, then.st_ino)


def _read_spec(directory: Path) -> tuple[bytes | None, bytes | None]:
    """``steer.json`` and ``scores.safetensors`` (None: absent) of one and the same save of ``directory``.

    A save replaces the whole directory (:func:`austeer.io.atomic_write_dir`), never a file in it, so
    both files are read through one handle on the directory: they belong to the save that handle opened,
    even when another process replaces the directory meanwhile. A file missing because that save was
    being removed (the name now holds another directory) is read again from the new one; after
    :data:`LOAD_TRIES` replaced directories the load fails with one line.
    """
    if not (hasattr(os, "O_DIRECTORY") and os.open in os.supports_dir_fd):  # no handles on directories
        return _read_file(directory, "steer.json", None), _read_file(directory, "scores.safetensors", None)
    for attempt in range(LOAD_TRIES):
        try:
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:  # missing, or between the two renames of a save without RENAME_EXCHANGE
            time.sleep(0.002 * (attempt + 1))
            continue
        except NotADirectoryError:
            return None, None
        try:
            steer = _read_file(directory, "steer.json", dir_fd)
            scores = _read_file(directory, "scores.safetensors", dir_fd)
            if (steer is not None and scores is not None) or _same_directory(directory, dir_fd):
                return steer, scores
        finally:
            os.close(dir_fd)
    if not (directory.exists() or directory.is_symlink()):
        return None, None
    raise SpecError(
        f"{directory}: the spec was replaced {LOAD_TRIES} times while it was read (another process is saving "
        "into it); load it again once that process is done"
    )


def load(directory: str | Path) -> SteerSpec:
    """Read a spec directory written by :meth:`SteerSpec.save`; anything malformed is a :class:`SpecError`.

    The message names the file and the field, e.g. ``steer.json: units[3].layer: -1 is out of range 0..29``.
    ``steer.json`` and ``scores.safetensors`` always come from the same save, also while another process
    saves into ``directory`` (see :func:`_read_spec`).
    """
    directory = Path(directory)
    path = directory / "steer.json"
    raw, raw_scores = _read_spec(directory)
    if raw is None:
        raise FileNotFoundError(f"{path} does not exist: not a steering spec directory")
    obj = _read_json(path, raw)
    where = str(path)
    if not isinstance(obj, dict):
        raise SpecError(f"{where}: expected a JSON object, found {type(obj).__name__}")
    _field(obj, "format_version", where, lambda v: _is_int(v) and v == FORMAT_VERSION, str(FORMAT_VERSION), 1)
    alpha = _field(obj, "alpha", where, _is_finite, "a finite number")
    raw_units = _field(obj, "units", where, lambda v: isinstance(v, list), "a list of units")
    units = [_unit(u, i, where) for i, u in enumerate(raw_units)]
    fp = _field(obj, "fingerprint", where, lambda v: isinstance(v, dict), "the model fingerprint object")
    check_fingerprint(fp, where)
    check_units(units, float(alpha), where, beta_range=True, fp=fp)
    sites = _field(obj, "sites", where, lambda v: isinstance(v, list), "a list of site names", [])
    n_pairs = _field(obj, "n_pairs", where, _is_pair_count, "an integer from 0 to 2**63 - 1", 0)
    _field(obj, "k", where, lambda v: _is_int(v) and v == len(units), f"the number of units, {len(units)}", 0)
    model_id = _field(obj, "model_id", where, lambda v: isinstance(v, str), "a string", "")
    finite_object = "an object (its numbers finite)"
    info = _field(obj, "info", where, lambda v: isinstance(v, dict) and _all_finite(v), finite_object, {})
    positions = _field(obj, "positions", where, lambda v: v in POSITIONS, f"one of {', '.join(POSITIONS)}", "all")
    selection = _field(obj, "selection", where, lambda v: v in SELECTIONS, f"one of {', '.join(SELECTIONS)}", "sign")
    _check_sites(sites, units, where)
    tensor_path = directory / "scores.safetensors"
    scores = _scores(tensor_path, raw_scores, fp, n_pairs) if raw_scores is not None else {}
    for site in scores:
        if sites and site not in sites:
            raise SpecError(f"{tensor_path}: {site}: scores of a site not in {where}'s sites {sites}")
    return SteerSpec(
        units=units,
        alpha=float(alpha),
        model_id=model_id,
        fingerprint=fp,
        n_pairs=n_pairs,
        sites=list(sites) or sorted({*(u.site for u in units), *scores}, key=SITES.index),
        scores=scores,
        info=info,
        positions=positions,
        selection=selection,
        path=where,
    )
