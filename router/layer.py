"""Building blocks on top of the encoder: pooling and the regression head."""

from __future__ import annotations

import torch
from torch import nn


def pad_token_ids(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into (input_ids, attention_mask)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, H) → (B, H): mask-aware mean, or the first ([CLS]) token."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 0/1 mask → (B, 1, 1, T) additive mask (0 keep, dtype-min drop), as BERT layers take it."""
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


class RegressionHead(nn.Module):
    """Pooled embedding → one normalised loss per expert. ``last`` is always the output Linear."""

    def __init__(self, hidden_size: int, num_experts: int, head_hidden: int = 0) -> None:
        super().__init__()
        if head_hidden > 0:
            self.body: nn.Module = nn.Sequential(nn.Linear(hidden_size, head_hidden), nn.GELU())
            self.last = nn.Linear(head_hidden, num_experts)
        else:
            self.body = nn.Identity()
            self.last = nn.Linear(hidden_size, num_experts)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.last(self.body(pooled))


def neighbour_sums(query: torch.Tensor, keys: torch.Tensor, losses: torch.Tensor, k: int,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of the observed losses of each query's k most cosine-similar memory rows, (B, E) each.

    ``keys`` (N, D) are unit-norm memory embeddings, ``losses`` (N, E) their losses with NaN for
    unobserved entries (which count 0 and add 0).
    """
    k = max(1, min(int(k), keys.shape[0]))
    unit = query.float() / query.float().norm(dim=1, keepdim=True).clamp(min=1e-12)
    nearest = (unit @ keys.float().T).topk(k, dim=1).indices  # (B, k)
    values = losses[nearest]  # (B, k, E)
    seen = ~torch.isnan(values)
    return torch.where(seen, values, torch.zeros_like(values)).sum(dim=1), seen.sum(dim=1).to(values.dtype)


def neighbour_losses(query: torch.Tensor, keys: torch.Tensor, losses: torch.Tensor, k: int) -> torch.Tensor:
    """Mean observed loss of each query's k most cosine-similar memory rows, (B, E)
    (:func:`neighbour_sums`). An expert that none of the k neighbours observed gets NaN."""
    total, count = neighbour_sums(query, keys, losses, k)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))

