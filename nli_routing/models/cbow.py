"""CBOW sentence encoder with optionally routed word projections (WP).

WP routing: ``CBOW_R(w_1..w_t) = sum_i FC_kd o ... o FC_k1 (w_i)`` where the path ``k1..kd`` is
chosen per sample by the router; every word of the sample follows the same path.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..routing import RoutedLayer, Trajectory
from ..routing.layer import segment_mean


class CBOWEncoder(nn.Module):
    """Bag of word vectors, optionally projected word by word through a routed layer (or, as its
    unrouted counterpart, through a plain module).

    ``pool`` is ``"sum"`` (the thesis' CBOW_R) or ``"mean"``; empty sentences encode to zeros.
    ``meta_keyword``: number of meta classes for a learned keyword (the unrouted baseline's way of seeing the
    meta label); 0 = off. By default the keyword is a vector added to the premise bag; with
    ``keyword_tokens`` it is a token in front of each sentence (premise and hypothesis) before encoding,
    as the thesis' keyword baseline (5.3.2): it is pooled with the words (and goes through an unrouted
    projection like them).
    """

    def __init__(
        self,
        weight: Tensor,
        pad_id: int,
        projection: RoutedLayer | nn.Module | None = None,
        freeze: bool = True,
        pool: str = "sum",
        meta_keyword: int = 0,
        keyword_tokens: bool = False,
    ) -> None:
        super().__init__()
        if keyword_tokens and meta_keyword and isinstance(projection, RoutedLayer):
            raise ValueError("keyword tokens are the unrouted baseline's: not with a routed projection")
        self.keyword_tokens = bool(keyword_tokens and meta_keyword)
        if pool not in ("sum", "mean"):
            raise ValueError(f"pool must be 'sum' or 'mean', got {pool!r}")
        self.embedding = nn.Embedding.from_pretrained(weight.float(), freeze=freeze, padding_idx=pad_id)
        self.projection = projection
        self.pool = pool
        self.dim = int(weight.shape[1])
        self.keyword = nn.Embedding(meta_keyword, self.dim) if meta_keyword else None
        if self.keyword is not None:
            nn.init.normal_(self.keyword.weight, std=float(weight.std()))

    def bag(self, vectors: Tensor, mask: Tensor) -> Tensor:
        """Pool ``[B, T, D]`` word vectors over the real tokens."""
        m = mask.unsqueeze(-1).to(vectors.dtype)
        total = (vectors * m).sum(1)
        if self.pool == "mean":
            total = total / m.sum(1).clamp_min(1.0)
        return total

    def pool_packed(self, words: Tensor, segments: Tensor, b: int) -> Tensor:
        """Pool packed token rows ``[N, D]`` into ``[b, D]`` by their sample ids."""
        if self.pool == "mean":
            return segment_mean(words, segments, b)
        return words.new_zeros(b, words.shape[-1]).index_add_(0, segments, words)

    def forward(
        self,
        premise_ids: Tensor,
        premise_mask: Tensor,
        hypothesis_ids: Tensor,
        hypothesis_mask: Tensor,
        meta: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, list[Trajectory]]:
        """Encode a premise/hypothesis batch; both sentences of a sample share the sample's path."""
        trajectories: list[Trajectory] = []
        if self.keyword_tokens:
            if meta is None:
                raise ValueError("this encoder adds a meta keyword and needs meta labels")
            return self.encode_with_keyword_tokens(premise_ids, premise_mask, hypothesis_ids, hypothesis_mask, meta)
        if self.projection is not None:
            # pack the real tokens of both sentences; every token follows its sample's path
            b = premise_ids.shape[0]
            rows = torch.arange(b, device=premise_ids.device)
            seg_p = rows.unsqueeze(1).expand_as(premise_ids)[premise_mask]
            seg_h = rows.unsqueeze(1).expand_as(hypothesis_ids)[hypothesis_mask]
            ids = torch.cat([premise_ids[premise_mask], hypothesis_ids[hypothesis_mask]])
            perm = None
            if isinstance(self.projection, RoutedLayer):
                # the routed layer picks the row order (ids embedded already sorted by block, output
                # left in its order): no gather of word vectors
                words, perm, traj = self.projection.forward_rows(
                    lambda idx: self.embedding(ids if idx is None else ids.index_select(0, idx)), meta,
                    torch.cat([seg_p, seg_h]))
                trajectories.append(traj)
            else:  # an unrouted projection: every word through the same blocks
                words = self.projection(self.embedding(ids))
            if perm is None:
                n_p = seg_p.numel()
                p_enc = self.pool_packed(words[:n_p], seg_p, b)
                h_enc = self.pool_packed(words[n_p:], seg_h, b)
            else:  # rows in the layer's order: premise rows pool into sample i, hypothesis rows into b + i
                pool_seg = torch.cat([seg_p, seg_h + b]).index_select(0, perm)
                p_enc, h_enc = self.pool_packed(words, pool_seg, 2 * b).split(b)
        else:
            p_enc = self.bag(self.embedding(premise_ids), premise_mask)
            h_enc = self.bag(self.embedding(hypothesis_ids), hypothesis_mask)
        if self.keyword is not None:
            if meta is None:
                raise ValueError("this encoder adds a meta keyword and needs meta labels")
            p_enc = p_enc + self.keyword(meta)
        return p_enc, h_enc, trajectories

    def encode_with_keyword_tokens(
        self, premise_ids: Tensor, premise_mask: Tensor, hypothesis_ids: Tensor, hypothesis_mask: Tensor, meta: Tensor
    ) -> tuple[Tensor, Tensor, list[Trajectory]]:
        """Each sentence with its sample's keyword token in front, then (an unrouted projection and) the bag."""
        keyword = self.keyword(meta).unsqueeze(1)  # [B, 1, D]
        first = premise_mask.new_ones(premise_mask.shape[0], 1)
        encodings = []
        for ids, mask in ((premise_ids, premise_mask), (hypothesis_ids, hypothesis_mask)):
            vectors = torch.cat([keyword, self.embedding(ids)], 1)
            if self.projection is not None:
                vectors = self.projection(vectors)
            encodings.append(self.bag(vectors, torch.cat([first, mask.bool()], 1)))
        return encodings[0], encodings[1], []
