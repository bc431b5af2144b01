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
    >>> from austeer.momentum import SignCounts, select
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

from austeer.sites import SITES


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
            raise ValueError(
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
            raise ValueError(f"cannot merge counts of shapes {tuple(self.pos.shape)} and {tuple(other.pos.shape)}")
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


def rank(counts: dict[str, SignCounts], k: int | None = None) -> list[Unit]:
    """The AUs of the given sites, best first (all of them, or the first ``k``); see the module docstring."""
    keys_primary, keys_z, site_ids, layers, indices, betas, names = [], [], [], [], [], [], []
    for site, c in counts.items():
        L, D = c.pos.shape
        beta = c.beta()
        z = c.zscore() * torch.sign(beta).double()
        keys_primary.append(c.consistency().flatten().numpy())
        keys_z.append(z.flatten().numpy())
        site_ids.append(np.full(L * D, SITES.index(site)))
        layers.append(np.repeat(np.arange(L), D))
        indices.append(np.tile(np.arange(D), L))
        betas.append(beta.flatten().numpy())
        names.append(np.full(L * D, site, dtype=object))
    if not keys_primary:
        return []
    primary, zk = np.concatenate(keys_primary), np.concatenate(keys_z)
    sid, lay, idx = np.concatenate(site_ids), np.concatenate(layers), np.concatenate(indices)
    order = np.lexsort((idx, lay, sid, -zk, -primary))[:k]
    b, nm = np.concatenate(betas), np.concatenate(names)
    return [Unit(str(nm[o]), int(lay[o]), int(idx[o]), float(b[o])) for o in order]


def select(counts: dict[str, SignCounts], k: int) -> list[Unit]:
    """The global top-``k`` AUs across all layers of the given sites."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return rank(counts, k)
