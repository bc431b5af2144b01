"""ITI (Li et al. 2023): per-head linear probes, top-K heads by held-out accuracy, shift ``alpha * sigma * theta``.

For every head (the ``head`` site reshaped to ``[n_heads, head_dim]``) a logistic-regression probe
separates positive from negative answers on the last-token head output. The pairs are split 70/30 (both
texts of a pair on the same side, seeded) and probes are ranked by held-out accuracy, ties broken by
held-out log-loss, then layer, then head. Each chosen head gets ``alpha * sigma * theta`` added to its
slice of the ``o_proj`` input at every position: ``theta`` is the unit mass-mean direction
``mean(pos) - mean(neg)``, ``sigma`` the standard deviation of all activations projected on ``theta``.
It steers ``K * head_dim`` activations. Folded as a bias: ``W_O (x + v) = W_O x + W_O v`` (``o_proj``
gets the bias ``W_O v``, created if absent).

Example:
    >>> import torch
    >>> theta, sigma = direction(torch.tensor([[1.0, 0.0], [3.0, 0.0]]), torch.tensor([[-1.0, 0.0], [-3.0, 0.0]]))
    >>> theta.tolist(), round(sigma, 4)
    ([1.0, 0.0], 2.582)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from austeer.errors import UserError
from austeer.methods.base import AddSteerer, Evidence, Frontier, Method


@dataclass
class Probes:
    """Held-out accuracy and log-loss of every head's probe, ``[L, H]`` each."""

    accuracy: torch.Tensor
    loss: torch.Tensor

    def ranking(self) -> list[tuple[int, int]]:
        """``(layer, head)`` best first: accuracy desc, loss asc, layer, head."""
        L, H = self.accuracy.shape
        keys = sorted(
            (-float(self.accuracy[l, h]), float(self.loss[l, h]), l, h)
            for l in range(L)
            for h in range(H)  # noqa: E741
        )
        return [(l, h) for _, _, l, h in keys]  # noqa: E741


def split_pairs(n: int, seed: int = 0, train_fraction: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair indices for probe training and held-out evaluation (at least one pair on each side)."""
    if n < 2:
        raise UserError(f"ITI needs at least 2 pairs to hold some out, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = min(n - 1, max(1, round(train_fraction * n)))
    return perm[:cut], perm[cut:]


def per_head(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[N, L, H*d]`` -> ``[N, L, H, d]``."""
    n, L, width = x.shape
    return x.reshape(n, L, n_heads, width // n_heads)


def train_probes(pos: torch.Tensor, neg: torch.Tensor, seed: int = 0, c: float = 1.0, steps: int = 12) -> Probes:
    """Fit one L2 logistic probe per head on ``[N, L, H, d]`` activations, all heads at once (Newton steps).

    The objective is scikit-learn's ``LogisticRegression(C=c)`` on standardised features:
    ``sum(log-loss) + ||w||^2 / (2c)`` (bias not penalised).
    """
    train, held = split_pairs(pos.shape[0], seed)
    N, L, H, d = pos.shape

    def data(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([pos[idx], neg[idx]]).double().reshape(2 * len(idx), L * H, d).transpose(0, 1)
        y = torch.cat([torch.ones(len(idx)), torch.zeros(len(idx))]).double()
        return x, y  # [G, n, d], [n]

    xt, yt = data(train)
    mu, sd = xt.mean(1, keepdim=True), xt.std(1, keepdim=True).clamp_min(1e-6)

    def design(x: torch.Tensor) -> torch.Tensor:
        z = (x - mu) / sd
        return torch.cat([z, torch.ones_like(z[..., :1])], -1).contiguous()  # [G, n, d + 1]

    xt1 = design(xt)
    G, _, D = xt1.shape
    reg = torch.eye(D, dtype=torch.float64) / c
    reg[-1, -1] = 0.0
    w = torch.zeros(G, D, dtype=torch.float64)
    for _ in range(steps):
        p = torch.sigmoid(torch.einsum("gnd,gd->gn", xt1, w))
        grad = torch.einsum("gnd,gn->gd", xt1, p - yt) + w @ reg
        hess = torch.einsum("gnd,gn,gne->gde", xt1, p * (1 - p), xt1) + reg + 1e-9 * torch.eye(D, dtype=torch.float64)
        w = w - torch.linalg.solve(hess, grad)
    xh, yh = data(held)
    logits = torch.einsum("gnd,gd->gn", design(xh), w)
    acc = ((logits > 0).double() == yh).double().mean(1)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, yh.expand_as(logits), reduction="none").mean(1)
    return Probes(acc.reshape(L, H).float(), loss.reshape(L, H).float())


def direction(pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Unit mass-mean direction ``theta`` of ``[N, d]`` activations and the std ``sigma`` along it."""
    diff = pos.double().mean(0) - neg.double().mean(0)
    theta = diff / diff.norm().clamp_min(1e-12)
    proj = torch.cat([pos, neg]).double() @ theta
    return theta.float(), float(proj.std())


def n_heads_of(model: nn.Module) -> int:
    return int(getattr(model.config, "num_attention_heads"))  # noqa: B009


def build(model: nn.Module, evidence: Evidence, heads: int = 16, alpha: float = 5.0, seed: int = 0) -> AddSteerer:
    """ITI with the ``heads`` best heads and strength ``alpha``."""
    H = n_heads_of(model)
    pos, neg = per_head(evidence.pos["head"], H), per_head(evidence.neg["head"], H)
    chosen = train_probes(pos, neg, seed).ranking()[:heads]
    d = pos.shape[-1]
    vectors: dict[int, torch.Tensor] = {}
    for layer, h in chosen:
        theta, sigma = direction(pos[:, layer, h], neg[:, layer, h])
        v = vectors.setdefault(layer, torch.zeros(H * d))
        v[h * d : (h + 1) * d] = float(alpha) * sigma * theta
    config = {"heads": heads, "alpha": alpha, "chosen": [list(c) for c in chosen]}
    return AddSteerer("iti", "head", vectors, config, n_steered=len(chosen) * d)


GRID = tuple({"heads": k, "alpha": a} for k in (4, 16) for a in (2.0, 5.0, 10.0, 15.0))

METHOD = Method(
    "iti",
    ("head",),
    GRID,
    build,
    "as a bias: W_O v added to o_proj's bias",
    adds_at="head",
    strength="alpha",
    frontier=Frontier({"heads": 16}, (2.0, 5.0, 10.0, 20.0)),
    default=True,
)
