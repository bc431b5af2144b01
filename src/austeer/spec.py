"""The steering spec: what is steered where, how strongly, for which model; saved atomically.

On disk a spec is a directory:

- ``steer.json``: model id and fingerprint, sites, alpha, number of pairs, and the units as a list of
  ``{"site", "layer", "index", "beta"}`` ordered by decreasing ``|beta|`` (readable, diffable);
- ``scores.safetensors``: the full sign-count statistics of every scored site (``<site>.pos``,
  ``<site>.neg``, ``<site>.total``, ``<site>.squares``), so ``k`` can be changed without refitting.

No pickle is ever read or written.

Example:
    >>> import tempfile
    >>> from austeer.momentum import Unit
    >>> from austeer.spec import SteerSpec, load
    >>> spec = SteerSpec(units=[Unit("head", 3, 17, -1.0)], alpha=5.0, model_id="m",
    ...                  fingerprint={"family": "llama", "n_layers": 30, "widths": {"head": 576}})
    >>> d = tempfile.mkdtemp()
    >>> _ = spec.save(d)
    >>> load(d).units[0]
    Unit(site='head', layer=3, index=17, beta=-1.0)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from austeer.io import atomic_save_tensors, atomic_write_dir, atomic_write_text  # noqa: F401 (re-exported)
from austeer.momentum import SignCounts, Unit, select
from austeer.sites import check_site

FORMAT_VERSION = 1


class SpecMismatchError(ValueError):
    """A spec was loaded onto a model it was not fitted for."""


@dataclass
class SteerSpec:
    """Selected AUs with their scores, a global strength ``alpha``, and the model they belong to."""

    units: list[Unit]
    alpha: float
    model_id: str = ""
    fingerprint: dict[str, Any] = field(default_factory=dict)
    n_pairs: int = 0
    sites: list[str] = field(default_factory=list)
    scores: dict[str, SignCounts] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for u in self.units:
            check_site(u.site)
        if not self.sites:
            self.sites = sorted({u.site for u in self.units})

    @property
    def k(self) -> int:
        return len(self.units)

    def gains(self, alpha: float | None = None) -> list[tuple[Unit, float]]:
        """``(unit, gamma)`` with ``gamma = alpha * beta``; the activation is multiplied by ``1 + gamma``."""
        a = self.alpha if alpha is None else alpha
        return [(u, a * u.beta) for u in self.units]

    def with_k(self, k: int) -> SteerSpec:
        """The same fit with the top ``k`` AUs (needs the stored scores)."""
        if not self.scores:
            raise ValueError("this spec has no stored scores; refit to change k")
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
        text = json.dumps(self.to_json(), indent=2)

        def write(tmp: Path) -> None:
            (tmp / "steer.json").write_text(text + "\n", encoding="utf-8")
            if tensors:
                save_file(tensors, str(tmp / "scores.safetensors"), metadata={"n_pairs": str(self.n_pairs)})

        return atomic_write_dir(Path(directory), write, kind="spec", force=force)

    def check_fits(self, fingerprint: dict[str, Any]) -> None:
        """Raise :class:`SpecMismatchError` unless ``fingerprint`` (of a model) matches this spec's."""
        mine = self.fingerprint
        if not mine:
            return
        if mine.get("family") != fingerprint.get("family"):
            raise SpecMismatchError(
                f"spec was fitted on a {mine.get('family')!r} model ({self.model_id}), "
                f"but this model is {fingerprint.get('family')!r}"
            )
        if mine.get("n_layers") != fingerprint.get("n_layers"):
            raise SpecMismatchError(
                f"spec expects {mine.get('n_layers')} layers, the model has {fingerprint.get('n_layers')}"
            )
        for site in self.sites:
            want, have = mine.get("widths", {}).get(site), fingerprint.get("widths", {}).get(site)
            if want != have:
                raise SpecMismatchError(f"spec expects site {site!r} of width {want}, the model's is {have}")


def load(directory: str | Path) -> SteerSpec:
    """Read a spec directory written by :meth:`SteerSpec.save`, with errors naming file and field."""
    directory = Path(directory)
    path = directory / "steer.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: not a steering spec directory")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    for key in ("alpha", "units"):
        if key not in obj:
            raise ValueError(f"{path}: missing field {key!r}")
    units = []
    for i, u in enumerate(obj["units"]):
        try:
            units.append(Unit(str(u["site"]), int(u["layer"]), int(u["index"]), float(u["beta"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: units[{i}] must have site, layer, index, beta ({exc!r})") from None
    scores: dict[str, SignCounts] = {}
    tensor_path = directory / "scores.safetensors"
    if tensor_path.exists():
        t = load_file(str(tensor_path))
        n = int(obj.get("n_pairs", 0))
        for site in sorted({key.split(".")[0] for key in t}):
            scores[site] = SignCounts(t[f"{site}.pos"], t[f"{site}.neg"], t[f"{site}.total"], t[f"{site}.squares"], n)
    return SteerSpec(
        units=units,
        alpha=float(obj["alpha"]),
        model_id=str(obj.get("model_id", "")),
        fingerprint=dict(obj.get("fingerprint", {})),
        n_pairs=int(obj.get("n_pairs", 0)),
        sites=list(obj.get("sites", [])),
        scores=scores,
        info=dict(obj.get("info", {})),
    )
