"""DA-Transformer (directed acyclic graph) math: link scorer, DAG loss, best alignment and decodings.

Huang et al., 2022, "Directed Acyclic Transformer for Non-Autoregressive Machine Translation". The decoder's L
(upsampled) positions are the vertices of a DAG; a translation is a path from vertex 0 to the row's last vertex
L_b - 1 through increasing vertices, emitting one token per visited vertex. Everything here is plain torch (CPU and
GPU, no compiled extension): the dynamic programmes loop over target positions (or path lengths) and are vectorised
over the batch and the vertices.

Conventions (shapes): B batch, L padded vertex count, T padded target length, V vocabulary.
- ``link_logprobs [B, L, L]``: ``link[b, u, v] = log P(next vertex v | vertex u)``; only ``u < v < L_b`` is used
  (the functions mask everything else themselves, so any finite filler is harmless).
- ``emission_logprobs [B, L, T]``: ``log P(y_j | vertex v)``, see :func:`target_emissions`.
- ``vertex_lengths [B]`` (L_b) and ``target_lengths [B]`` (T_b): row lengths, right padding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

__all__ = [
    "DAGDecodeOutput",
    "DAGLinkScorer",
    "dag_best_alignment",
    "dag_greedy",
    "dag_log_likelihood",
    "dag_lookahead",
    "dag_loss",
    "dag_viterbi",
    "link_mask",
    "target_emissions",
]

NEG_INF = float("-inf")


class DAGDecodeOutput(NamedTuple):
    """A decoded batch: ``tokens [B, N]`` right-padded with ``pad_token_id``, ``lengths [B]`` (tokens = visited
    vertices), ``scores [B]`` (the path's objective: summed link + token log-probs, length-normalised for Viterbi)
    and ``vertices [B, N]`` (the visited vertex indices, padded with -1; what glancing on the DAG path needs)."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    scores: torch.Tensor
    vertices: torch.Tensor


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _safe_logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``logsumexp`` whose result is -inf where every term is -inf, with a ZERO gradient there.

    ``torch.logsumexp`` returns -inf for an all -inf slice but its backward is ``exp(x - result) = exp(nan)``, so a
    single unreachable DAG state would turn every gradient into NaN (even multiplied by a zero upstream gradient).
    """
    peak = x.detach().amax(dim, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = torch.exp(x - peak).sum(dim, keepdim=True)
    reachable = total > 0
    out = torch.log(torch.where(reachable, total, torch.ones_like(total))) + peak
    out = torch.where(reachable, out, torch.full_like(out, NEG_INF))
    return out.squeeze(dim)


def _check_lengths(name: str, lengths: torch.Tensor, batch: int, maximum: int) -> torch.Tensor:
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"{name} must have shape [{batch}], got {tuple(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {lengths.dtype}")
    if batch and (int(lengths.min()) < 0 or int(lengths.max()) > maximum):
        raise ValueError(f"{name} must lie in [0, {maximum}], got {lengths.tolist()}")
    return lengths.long()


def _check_links(link_logprobs: torch.Tensor, batch: int, vertices: int) -> None:
    if link_logprobs.shape != (batch, vertices, vertices):
        raise ValueError(f"link_logprobs must have shape [{batch}, {vertices}, {vertices}], got "
                         f"{tuple(link_logprobs.shape)}")


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The DP accumulates over many steps: half precision runs it in float32."""
    return torch.float32 if tensor.dtype in (torch.float16, torch.bfloat16) else tensor.dtype


def link_mask(vertex_lengths: torch.Tensor, num_vertices: int) -> torch.Tensor:
    """``[B, L, L]`` bool: the allowed links ``u < v < L_b`` of each row (the last vertex's row is all False)."""
    index = torch.arange(num_vertices, device=vertex_lengths.device)
    inside = index[None, :] < vertex_lengths[:, None]  # [B, L]
    forward = index[:, None] < index[None, :]  # [L, L]
    return forward[None] & inside[:, :, None] & inside[:, None, :]


def _masked_links(link_logprobs: torch.Tensor, vertex_lengths: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    allowed = link_mask(vertex_lengths, link_logprobs.shape[1])
    return torch.where(allowed, link_logprobs.to(dtype), torch.full((), NEG_INF, dtype=dtype,
                                                                   device=link_logprobs.device))


def _end_of_row(values: torch.Tensor, vertex_lengths: torch.Tensor) -> torch.Tensor:
    """``values[b, L_b - 1]`` for ``values [B, L]`` (-inf for an empty graph)."""
    last = (vertex_lengths - 1).clamp(min=0)
    picked = values.gather(1, last[:, None]).squeeze(1)
    return torch.where(vertex_lengths > 0, picked, torch.full_like(picked, NEG_INF))


# ----------------------------------------------------------------------------------------------------------------
# link scorer


class DAGLinkScorer(nn.Module):
    """Decoder states ``[B, L, d]`` -> link log-probabilities ``[B, L, L]`` (``log P(v | u)``, normalised over
    ``u < v < L_b``).

    Each of ``num_heads`` heads scores ``q_u . k_v / sqrt(d_head)`` and log-softmaxes it over the allowed ``v``;
    with more than one head a gate (softmax over heads, from the state of ``u``) mixes the heads' distributions, as
    in DA-Transformer, so each row stays a probability distribution. Rows with no allowed successor (the last
    vertex, padding) are all -inf: their scores are replaced by zeros before the softmax and masked after it, so no
    NaN appears in the output or in the gradient.
    """

    def __init__(self, d_model: int, num_heads: int = 1, head_dim: int | None = None) -> None:
        super().__init__()
        if d_model <= 0 or num_heads <= 0:
            raise ValueError(f"d_model and num_heads must be positive, got {d_model} and {num_heads}")
        if head_dim is None:
            if d_model % num_heads:
                raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads}) when head_dim "
                                 "is not given")
            head_dim = d_model // num_heads
        self.num_heads, self.head_dim = num_heads, head_dim
        self.query = nn.Linear(d_model, num_heads * head_dim)
        self.key = nn.Linear(d_model, num_heads * head_dim)
        self.gate = nn.Linear(d_model, num_heads) if num_heads > 1 else None

    def forward(self, hidden_states: torch.Tensor, vertex_mask: torch.Tensor) -> torch.Tensor:
        """``hidden_states [B, L, d]``, ``vertex_mask [B, L]`` (bool, a prefix of each row) -> ``[B, L, L]``."""
        if hidden_states.dim() != 3 or vertex_mask.shape != hidden_states.shape[:2]:
            raise ValueError(f"expected hidden_states [B, L, d] and vertex_mask [B, L], got "
                             f"{tuple(hidden_states.shape)} and {tuple(vertex_mask.shape)}")
        vertex_mask = vertex_mask.bool()
        if (vertex_mask[:, 1:] & ~vertex_mask[:, :-1]).any():
            raise ValueError("vertex_mask must be right-padded (True then False in every row)")
        batch, vertices, _ = hidden_states.shape
        dtype = _compute_dtype(hidden_states)
        allowed = link_mask(vertex_mask.sum(-1), vertices)  # [B, L, L]
        heads = (batch, vertices, self.num_heads, self.head_dim)
        q = self.query(hidden_states).view(heads).transpose(1, 2).to(dtype)  # [B, H, L, Dh]
        k = self.key(hidden_states).view(heads).transpose(1, 2).to(dtype)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # [B, H, L, L]
        allowed_h = allowed[:, None]
        empty_row = ~allowed_h.any(-1, keepdim=True)
        # masked entries -> -inf; rows with nothing allowed -> zeros (a finite softmax, masked again below)
        scores = torch.where(allowed_h, scores, torch.full_like(scores, NEG_INF))
        scores = torch.where(empty_row, torch.zeros_like(scores), scores)
        log_links = torch.log_softmax(scores, dim=-1)
        if self.gate is not None:
            log_gate = torch.log_softmax(self.gate(hidden_states).to(dtype), dim=-1)  # [B, L, H]
            finite = torch.where(allowed_h, log_links, torch.zeros_like(log_links))  # keep logsumexp grads finite
            log_links = torch.logsumexp(finite + log_gate.transpose(1, 2)[..., None], dim=1)
        else:
            log_links = log_links[:, 0]
        return torch.where(allowed, log_links, torch.full_like(log_links, NEG_INF))


# ----------------------------------------------------------------------------------------------------------------
# loss


def target_emissions(token_logprobs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``token_logprobs [B, L, V]`` (vocabulary log-softmax per vertex), ``target [B, T]`` -> ``[B, L, T]`` with
    ``out[b, v, j] = token_logprobs[b, v, target[b, j]]``. Padded target positions must hold a valid id (e.g. the
    pad id); their columns are ignored by the DAG functions."""
    if token_logprobs.dim() != 3 or target.dim() != 2 or target.shape[0] != token_logprobs.shape[0]:
        raise ValueError(f"expected token_logprobs [B, L, V] and target [B, T], got {tuple(token_logprobs.shape)} "
                         f"and {tuple(target.shape)}")
    vocab = token_logprobs.shape[-1]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= vocab):
        raise ValueError(f"target ids must lie in [0, {vocab}), got min {int(target.min())} max {int(target.max())}")
    batch, vertices, _ = token_logprobs.shape
    index = target[:, None, :].expand(batch, vertices, target.shape[1])
    return token_logprobs.gather(-1, index)


def _check_dp_inputs(emission_logprobs: torch.Tensor, link_logprobs: torch.Tensor, vertex_lengths: torch.Tensor,
                     target_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if emission_logprobs.dim() != 3:
        raise ValueError(f"emission_logprobs must have shape [B, L, T], got {tuple(emission_logprobs.shape)}")
    batch, vertices, targets = emission_logprobs.shape
    _check_links(link_logprobs, batch, vertices)
    vertex_lengths = _check_lengths("vertex_lengths", vertex_lengths, batch, vertices)
    target_lengths = _check_lengths("target_lengths", target_lengths, batch, targets)
    return vertex_lengths, target_lengths


def _infeasible(vertex_lengths: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """A path of T_b vertices from 0 to L_b - 1 exists iff 1 <= T_b <= L_b and (T_b >= 2 or L_b == 1)."""
    return (target_lengths < 1) | (target_lengths > vertex_lengths) | ((target_lengths == 1) & (vertex_lengths != 1))


def _dag_dp(emission_logprobs: torch.Tensor, link_logprobs: torch.Tensor, vertex_lengths: torch.Tensor,
            target_lengths: torch.Tensor, best: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Forward DP over target positions: sum (``best=False``) or max (``best=True``, with back-pointers)."""
    batch, vertices, targets = emission_logprobs.shape
    dtype = _compute_dtype(emission_logprobs)
    links = _masked_links(link_logprobs, vertex_lengths, dtype)  # [B, L(u), L(v)]
    inside = torch.arange(vertices, device=links.device)[None, :] < vertex_lengths[:, None]  # [B, L]
    emissions = emission_logprobs.to(dtype)
    result = torch.full((batch,), NEG_INF, dtype=dtype, device=links.device)
    # f[0][v]: the path starts at vertex 0 with the first target token
    start = torch.zeros_like(inside)
    start[:, 0] = True
    f = torch.where(start & inside, emissions[:, :, 0], torch.full((), NEG_INF, dtype=dtype, device=links.device)) \
        if targets else None
    pointers: list[torch.Tensor] = []
    for j in range(targets):
        if j > 0:
            step = f[:, :, None] + links  # [B, u, v]
            if best:
                f, arg = step.max(dim=1)
                pointers.append(arg)
            else:
                f = _safe_logsumexp(step, dim=1)
            f = f + torch.where(inside, emissions[:, :, j], torch.zeros((), dtype=dtype, device=links.device))
        result = torch.where(target_lengths == j + 1, _end_of_row(f, vertex_lengths), result)
    return result, pointers


def dag_log_likelihood(emission_logprobs: torch.Tensor, link_logprobs: torch.Tensor, vertex_lengths: torch.Tensor,
                       target_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log P(y | x)`` summed over every DAG path: ``emission_logprobs [B, L, T]``, ``link_logprobs [B, L, L]``,
    ``vertex_lengths [B]``, ``target_lengths [B]`` -> ``(log_likelihood [B], infeasible [B] bool)``.

    ``f[0][0] = e[0, 0]``; ``f[j][v] = logsumexp_u (f[j-1][u] + link[u, v]) + e[v, j]``; the result is
    ``f[T_b - 1][L_b - 1]``. A row with no path (empty target, target longer than its graph, or one token for a
    graph of more than one vertex) or whose every path has probability 0 is -inf and flagged infeasible; its
    gradient is zero, never NaN. Half-precision inputs are computed in float32.
    """
    vertex_lengths, target_lengths = _check_dp_inputs(emission_logprobs, link_logprobs, vertex_lengths,
                                                      target_lengths)
    log_likelihood, _ = _dag_dp(emission_logprobs, link_logprobs, vertex_lengths, target_lengths, best=False)
    infeasible = _infeasible(vertex_lengths, target_lengths) | torch.isneginf(log_likelihood)
    return log_likelihood, infeasible


def dag_loss(emission_logprobs: torch.Tensor, link_logprobs: torch.Tensor, vertex_lengths: torch.Tensor,
             target_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over feasible rows of ``-log P(y | x) / T_b`` -> ``(loss [], skipped [] long)``.

    Infeasible rows (see :func:`dag_log_likelihood`) are left out and counted instead of producing an infinite
    loss; with every row skipped the loss is 0 (still attached to the graph, zero gradient). ``skipped`` stays a
    tensor so the training step can log it without a device sync.
    """
    log_likelihood, infeasible = dag_log_likelihood(emission_logprobs, link_logprobs, vertex_lengths, target_lengths)
    per_row = -log_likelihood / target_lengths.clamp(min=1).to(log_likelihood.dtype)
    per_row = torch.where(infeasible, torch.zeros_like(per_row), per_row)
    kept = (~infeasible).sum()
    loss = per_row.sum() / kept.clamp(min=1).to(per_row.dtype)
    return loss, infeasible.sum()


def dag_best_alignment(emission_logprobs: torch.Tensor, link_logprobs: torch.Tensor, vertex_lengths: torch.Tensor,
                       target_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The most probable path for the given target (max instead of sum in the DP; what glancing uses):
    -> ``(vertices [B, T] long, vertex of each target token, -1 on padding and infeasible rows; score [B])``."""
    vertex_lengths, target_lengths = _check_dp_inputs(emission_logprobs, link_logprobs, vertex_lengths,
                                                      target_lengths)
    with torch.no_grad():
        score, pointers = _dag_dp(emission_logprobs, link_logprobs, vertex_lengths, target_lengths, best=True)
    infeasible = _infeasible(vertex_lengths, target_lengths) | torch.isneginf(score)
    batch, _, targets = emission_logprobs.shape
    path = torch.full((batch, targets), -1, dtype=torch.long, device=emission_logprobs.device)
    current = (vertex_lengths - 1).clamp(min=0)
    for j in range(targets - 1, -1, -1):
        current = torch.where(target_lengths - 1 == j, (vertex_lengths - 1).clamp(min=0), current)
        active = j < target_lengths
        path[:, j] = torch.where(active, current, path[:, j])
        if j > 0:
            previous = pointers[j - 1].gather(1, current[:, None]).squeeze(1)
            current = torch.where(active, previous, current)
    path[infeasible] = -1
    return path, score


# ----------------------------------------------------------------------------------------------------------------
# decoding


def _best_tokens(token_logprobs: torch.Tensor, exclude_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Best token and its log-prob at every vertex, never one of ``exclude_ids`` (e.g. pad, bos, mask)."""
    vocab = token_logprobs.shape[-1]
    bad = [i for i in exclude_ids if not 0 <= int(i) < vocab]
    if bad:
        raise ValueError(f"exclude_ids {bad} are outside the vocabulary [0, {vocab})")
    if len(set(int(i) for i in exclude_ids)) >= vocab:
        raise ValueError("exclude_ids exclude the whole vocabulary")
    scores = token_logprobs
    if len(exclude_ids):
        scores = token_logprobs.clone()
        scores[..., list(exclude_ids)] = NEG_INF
    values, tokens = scores.max(dim=-1)
    return values, tokens


def _check_decode_inputs(token_logprobs: torch.Tensor, link_logprobs: torch.Tensor,
                         vertex_lengths: torch.Tensor) -> torch.Tensor:
    if token_logprobs.dim() != 3:
        raise ValueError(f"token_logprobs must have shape [B, L, V], got {tuple(token_logprobs.shape)}")
    batch, vertices, _ = token_logprobs.shape
    _check_links(link_logprobs, batch, vertices)
    vertex_lengths = _check_lengths("vertex_lengths", vertex_lengths, batch, vertices)
    if batch and int(vertex_lengths.min()) < 1:
        raise ValueError(f"every row needs at least one vertex to decode, got vertex_lengths {vertex_lengths.tolist()}")
    return vertex_lengths


def _collect(vertices: torch.Tensor, tokens_per_vertex: torch.Tensor, lengths: torch.Tensor, scores: torch.Tensor,
             pad_token_id: int) -> DAGDecodeOutput:
    width = int(lengths.max()) if lengths.numel() else 0
    vertices = vertices[:, :width]
    valid = vertices >= 0
    tokens = tokens_per_vertex.gather(1, vertices.clamp(min=0))
    tokens = torch.where(valid, tokens, torch.full_like(tokens, pad_token_id))
    return DAGDecodeOutput(tokens, lengths, scores, torch.where(valid, vertices, torch.full_like(vertices, -1)))


def _walk(token_logprobs: torch.Tensor, link_logprobs: torch.Tensor, vertex_lengths: torch.Tensor,
          exclude_ids: Sequence[int], pad_token_id: int, lookahead_weight: float | None) -> DAGDecodeOutput:
    vertex_lengths = _check_decode_inputs(token_logprobs, link_logprobs, vertex_lengths)
    batch, count, _ = token_logprobs.shape
    dtype = _compute_dtype(token_logprobs)
    token_scores, tokens = _best_tokens(token_logprobs.to(dtype), exclude_ids)  # [B, L]
    links = _masked_links(link_logprobs, vertex_lengths, dtype)
    choice = links if lookahead_weight is None else links + lookahead_weight * token_scores[:, None, :]
    device = token_logprobs.device
    rows = torch.arange(batch, device=device)
    last = vertex_lengths - 1
    current = torch.zeros(batch, dtype=torch.long, device=device)
    path = torch.full((batch, count), -1, dtype=torch.long, device=device)
    path[:, 0] = 0
    lengths = torch.ones(batch, dtype=torch.long, device=device)
    scores = token_scores[:, 0].clone()
    for step in range(1, count):
        active = current != last
        if not bool(active.any()):
            break
        row_choice = choice[rows, current]  # [B, L]
        best_value, best_vertex = row_choice.max(dim=-1)
        # no finite successor (links all -inf): jump to the last vertex so the walk always ends there
        best_vertex = torch.where(torch.isneginf(best_value), last, best_vertex)
        nxt = torch.where(active, best_vertex, current)
        gained = links[rows, current, nxt] + token_scores[rows, nxt]
        scores = torch.where(active, scores + gained, scores)
        path[:, step] = torch.where(active, nxt, path[:, step])
        lengths = lengths + active.long()
        current = nxt
    return _collect(path, tokens, lengths, scores, pad_token_id)


def dag_greedy(token_logprobs: torch.Tensor, link_logprobs: torch.Tensor, vertex_lengths: torch.Tensor,
               exclude_ids: Sequence[int] = (), pad_token_id: int = 0) -> DAGDecodeOutput:
    """From vertex 0 follow the most probable link until the row's last vertex; emit the best non-excluded token
    of each visited vertex. ``token_logprobs [B, L, V]``, ``link_logprobs [B, L, L]``, ``vertex_lengths [B]``;
    ``scores`` is the path's summed link + token log-prob."""
    return _walk(token_logprobs, link_logprobs, vertex_lengths, exclude_ids, pad_token_id, None)


def dag_lookahead(token_logprobs: torch.Tensor, link_logprobs: torch.Tensor, vertex_lengths: torch.Tensor,
                  exclude_ids: Sequence[int] = (), pad_token_id: int = 0, token_weight: float = 1.0) -> DAGDecodeOutput:
    """Like :func:`dag_greedy`, but the next vertex maximises ``link[u, v] + token_weight * best_token_logprob[v]``
    (DA-Transformer's lookahead decoding; ``token_weight`` is its beta, 1 in the paper)."""
    return _walk(token_logprobs, link_logprobs, vertex_lengths, exclude_ids, pad_token_id, float(token_weight))


def dag_viterbi(token_logprobs: torch.Tensor, link_logprobs: torch.Tensor, vertex_lengths: torch.Tensor,
                length_penalty_exponent: float = 1.0, exclude_ids: Sequence[int] = (),
                pad_token_id: int = 0) -> DAGDecodeOutput:
    """The path from vertex 0 to the row's last vertex maximising ``(sum of link and best-token log-probs) /
    n ** length_penalty_exponent`` over every path and every length ``n`` (visited vertices = output tokens).

    Each vertex's token is fixed first (best non-excluded token); ``g[n][v] = max_u g[n-1][u] + link[u, v] +
    s[v]`` is the best ``n``-vertex path ending at ``v``; the best ``n`` per row is picked after the DP and the
    path is read back through the stored back-pointers. ``token_logprobs [B, L, V]`` -> :class:`DAGDecodeOutput`.
    """
    vertex_lengths = _check_decode_inputs(token_logprobs, link_logprobs, vertex_lengths)
    if not math.isfinite(length_penalty_exponent):
        raise ValueError(f"length_penalty_exponent must be finite, got {length_penalty_exponent}")
    batch, count, _ = token_logprobs.shape
    dtype = _compute_dtype(token_logprobs)
    device = token_logprobs.device
    token_scores, tokens = _best_tokens(token_logprobs.to(dtype), exclude_ids)
    links = _masked_links(link_logprobs, vertex_lengths, dtype)
    g = torch.full((batch, count), NEG_INF, dtype=dtype, device=device)
    g[:, 0] = token_scores[:, 0]
    ends = [_end_of_row(g, vertex_lengths)]  # best score of an n-vertex path ending at L_b - 1, n = 1..L
    pointers: list[torch.Tensor] = []
    for _ in range(1, count):
        g, arg = (g[:, :, None] + links).max(dim=1)
        g = g + token_scores
        pointers.append(arg)
        ends.append(_end_of_row(g, vertex_lengths))
    raw = torch.stack(ends, dim=1)  # [B, n]
    sizes = torch.arange(1, count + 1, device=device, dtype=dtype)
    normalised = raw / sizes[None, :] ** length_penalty_exponent
    scores, best = normalised.max(dim=1)
    lengths = best + 1
    path = torch.full((batch, count), -1, dtype=torch.long, device=device)
    current = vertex_lengths - 1
    for i in range(count - 1, -1, -1):
        current = torch.where(lengths - 1 == i, vertex_lengths - 1, current)
        active = i < lengths
        path[:, i] = torch.where(active, current, path[:, i])
        if i > 0:
            previous = pointers[i - 1].gather(1, current[:, None]).squeeze(1)
            current = torch.where(active, previous, current)
    return _collect(path, tokens, lengths, scores, pad_token_id)
