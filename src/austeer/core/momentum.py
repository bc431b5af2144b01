"""Activation momentum: streamed sign counts, the signed score beta, and global top-k selection.

For pair ``j`` and AU ``u``: ``m = x_u(prompt+positive) - x_u(prompt+negative)`` at the last token.
``beta_u = +r_pos if r_pos >= r_neg else -r_neg`` with ``r_pos``/``r_neg`` the shares of pairs with
``m > 0`` / ``m < 0`` (METHOD.md section 2).

Only counts and sums are kept, so memory is O(number of AUs) whatever the number of pairs, and two
:class:`SignCounts` merge by addition (batches, processes, GPUs).

Ranking (deterministic): AUs are sorted globally across layers and sites by

1. ``|beta|`` (descending; compared as exact integer counts, no float ties),
2. the standardized mean momentum in the direction of beta, ``sign(beta) * mean(m) / std(m)``
   (descending; ``std = 0`` with a non-zero mean counts as infinitely consistent),
3. site order (head, ffn, neuron, residual), layer, index (ascending).

Example:
    >>> import torch
    >>> from austeer.core.momentum import SignCounts, select
    >>> c = SignCounts.zeros(2, 3)
    >>> c.update(torch.tensor([[[1.0, -1.0, 0.5], [0.0, 2.0, -3.0]], [[1.0, -2.0, -0.5], [0.0, 1.0, -1.0]]]))
    >>> c.beta()
    tensor([[ 1.0000, -1.0000,  0.5000],
            [ 0.0000,  1.0000, -1.0000]])
    >>> [(u.layer, u.index, u.beta) for u in select({"head": c}, k=2)]
    [(0, 0, 1.0), (0, 1, -1.0)]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from austeer.core.sites import SITES
from austeer.errors import UserError


@dataclass
class SignCounts:
    """Mergeable statistics of the momenta of one site: ``[n_layers, width]`` each."""

    pos: torch.Tensor  # int64: number of pairs with m > 0
    neg: torch.Tensor  # int64: number of pairs with m < 0
    total: torch.Tensor  # float64: sum of m
    squares: torch.Tensor  # float64: sum of m^2
    n: int = 0

    @classmethod
    def zeros(cls, n_layers: int, width: int) -> SignCounts:
        shape = (n_layers, width)
        return cls(
            torch.zeros(shape, dtype=torch.int64),
            torch.zeros(shape, dtype=torch.int64),
            torch.zeros(shape, dtype=torch.float64),
            torch.zeros(shape, dtype=torch.float64),
        )

    def update(self, momenta: torch.Tensor) -> None:
        """Add a batch of momenta ``[batch, n_layers, width]`` (computed in float32 or wider)."""
        if momenta.dim() != 3 or momenta.shape[1:] != self.pos.shape:
            raise UserError(
                f"momenta must be [batch, {self.pos.shape[0]}, {self.pos.shape[1]}], got {tuple(momenta.shape)}"
            )
        m = momenta.detach().to("cpu", torch.float64)
        self.pos += (m > 0).sum(0)
        self.neg += (m < 0).sum(0)
        self.total += m.sum(0)
        self.squares += (m * m).sum(0)
        self.n += int(m.shape[0])

    def __add__(self, other: SignCounts) -> SignCounts:
        if other.pos.shape != self.pos.shape:
            raise UserError(f"cannot merge counts of shapes {tuple(self.pos.shape)} and {tuple(other.pos.shape)}")
        return SignCounts(
            self.pos + other.pos,
            self.neg + other.neg,
            self.total + other.total,
            self.squares + other.squares,
            self.n + other.n,
        )

    def beta(self) -> torch.Tensor:
        """Signed sign-consistency score in ``[-1, 1]`` (float32)."""
        n = max(self.n, 1)
        pos = self.pos.double() / n
        neg = self.neg.double() / n
        return torch.where(self.pos >= self.neg, pos, -neg).float()

    def consistency(self) -> torch.Tensor:
        """``max(#pos, #neg)``: ``|beta| * n`` as an exact integer (the primary ranking key)."""
        return torch.maximum(self.pos, self.neg)

    def zscore(self) -> torch.Tensor:
        """Standardized mean momentum ``mean / std`` (population std); ``+-inf`` where std is 0."""
        n = max(self.n, 1)
        mean = self.total / n
        var = (self.squares / n - mean * mean).clamp_min(0.0)
        std = var.sqrt()
        z = torch.where(std > 1e-12 * mean.abs().clamp_min(1e-30), mean / std, mean.sign() * torch.inf)
        return torch.nan_to_num(z, nan=0.0)

    def mean(self) -> torch.Tensor:
        return (self.total / max(self.n, 1)).float()


@dataclass(frozen=True)
class Unit:
    """One selected atomic unit: ``(site, layer, index)`` with its signed score ``beta``."""

    site: str
    layer: int
    index: int
    beta: float


def _keys(counts: dict[str, SignCounts]) -> dict[str, np.ndarray]:
    """The ranking keys of every AU of ``counts``, flattened and concatenated over the sites."""
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("primary", "z", "site", "layer", "index", "beta", "name")}
    for site, c in counts.items():
        L, D = c.pos.shape
        beta = c.beta()
        cols["primary"].append(c.consistency().flatten().numpy())
        cols["z"].append((c.zscore() * torch.sign(beta).double()).flatten().numpy())
        cols["site"].append(np.full(L * D, SITES.index(site)))
        cols["layer"].append(np.repeat(np.arange(L), D))
        cols["index"].append(np.tile(np.arange(D), L))
        cols["beta"].append(beta.flatten().numpy())
        cols["name"].append(np.full(L * D, site, dtype=object))
    return {k: np.concatenate(v) for k, v in cols.items()}


def _order(keys: dict[str, np.ndarray]) -> np.ndarray:
    return np.lexsort((keys["index"], keys["layer"], keys["site"], -keys["z"], -keys["primary"]))


def rank(counts: dict[str, SignCounts], k: int | None = None) -> list[Unit]:
    """The AUs of the given sites, best first (all of them, or the first ``k``); see the module docstring."""
    if not counts:
        return []
    keys = _keys(counts)
    order = _order(keys)[:k]
    b, nm, lay, idx = keys["beta"], keys["name"], keys["layer"], keys["index"]
    return [Unit(str(nm[o]), int(lay[o]), int(idx[o]), float(b[o])) for o in order]


def tied_at_cut(counts: dict[str, SignCounts], k: int) -> int:
    """How many AUs tie with the ``k``-th on every evidence key when the ``k+1``-th does too, else 0.

    Then the top-``k`` cut is decided by site, layer and index order, not by the pairs: with one pair
    every AU that moves at all ties at ``|beta| = 1``.

    Example:
        >>> c = SignCounts.zeros(1, 4)
        >>> c.update(torch.tensor([[[1.0, 2.0, -1.0, 0.0]]]))
        >>> tied_at_cut({"head": c}, 1), tied_at_cut({"head": c}, 3)
        (3, 0)
    """
    if not counts:
        return 0
    keys = _keys(counts)
    if k < 1 or k >= len(keys["primary"]):
        return 0
    order = _order(keys)
    last, nxt = order[k - 1], order[k]
    primary, z = keys["primary"], keys["z"]
    if primary[last] != primary[nxt] or z[last] != z[nxt]:
        return 0
    return int(((primary == primary[last]) & (z == z[last])).sum())


def top_k_mask(values: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """``(layer, index)`` of the ``k`` largest ``|values|`` (``[L, W]``), largest first; ties go to the lower
    layer, then the lower index (SADI's mask by mean difference, the attribution selection).

    Example:
        >>> top_k_mask(torch.tensor([[0.1, -3.0], [2.0, 0.5]]), 2)
        [(0, 1), (1, 0)]
    """
    L, W = values.shape
    mag = values.abs().double().flatten().numpy()
    order = np.lexsort((np.arange(L * W), -mag))[:k]
    return [(int(o // W), int(o % W)) for o in order]


def select(counts: dict[str, SignCounts], k: int) -> list[Unit]:
    """The global top-``k`` AUs across all layers of the given sites."""
    if k < 0:
        raise UserError(f"k must be >= 0, got {k}")
    return rank(counts, k)
