"""The `dag` method (DA-Transformer) and its math: link scorer, DAG loss, best alignment and decodings.

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

The method (:class:`DAGMethod`, registry row ``"dag"``): ``L_b = ceil(upsample_ratio x source length)`` vertices
(``method_ctc.upsampled_lengths``), the link scorer registered as ``model.model.link_scorer``, vertex 0 and the
last vertex as the graph's start and end (:func:`bracketed_emissions`), optional glancing on the reference's best
path (``method_glat``), and one-pass greedy / lookahead / Viterbi decoding from each vertex's best token
(:func:`dag_walk`, :func:`dag_viterbi_best`). Neither training nor decoding builds a ``[B, L, V]`` log-prob tensor:
the loss takes the target tokens' log-probs chunk by chunk (:func:`vocabulary_emissions`; it keeps the logits for
the backward, in chunks).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from .method_base import (
    Hypotheses,
    LossOutput,
    NATMethod,
    check_finite,
    check_integer,
    chunk_positions,
    predict_tokens,
    special_token_ids,
)
from .method_ctc import upsampled_lengths
from .method_glat import GlancingOptions, glancing_reveal

__all__ = [
    "DAGDecodeOutput",
    "DAGDecodingOptions",
    "DAGLinkScorer",
    "DAGMethod",
    "DAGTrainingOptions",
    "bracketed_emissions",
    "dag_best_alignment",
    "dag_greedy",
    "dag_log_likelihood",
    "dag_lookahead",
    "dag_loss",
    "dag_viterbi",
    "dag_viterbi_best",
    "dag_walk",
    "link_mask",
    "path_log_probability",
    "target_emissions",
    "vocabulary_emissions",
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
        # a check on values: skipped while traced (torch.export, ONNX export), as the model's own checks
        if not torch.compiler.is_compiling() and (vertex_mask[:, 1:] & ~vertex_mask[:, :-1]).any():
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
        # masked entries -> -inf; rows with nothing allowed -> zeros (a finite softmax, masked again below).
        # masked_fill, not where(..., full_like(...)): no [B, H, L, L] tensors of constants
        scores = scores.masked_fill(~allowed_h, NEG_INF).masked_fill(empty_row, 0.0)
        log_links = torch.log_softmax(scores, dim=-1)
        if self.gate is not None:
            log_gate = torch.log_softmax(self.gate(hidden_states).to(dtype), dim=-1)  # [B, L, H]
            finite = log_links.masked_fill(~allowed_h, 0.0)  # keep logsumexp grads finite
            log_links = torch.logsumexp(finite + log_gate.transpose(1, 2)[..., None], dim=1)
        else:
            log_links = log_links[:, 0]
        return log_links.masked_fill(~allowed, NEG_INF)


# ----------------------------------------------------------------------------------------------------------------
# loss


def _check_target_ids(target: torch.Tensor, vocab: int) -> None:
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= vocab):
        raise ValueError(f"target ids must lie in [0, {vocab}), got min {int(target.min())} max {int(target.max())}")


def target_emissions(token_logprobs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``token_logprobs [B, L, V]`` (vocabulary log-softmax per vertex), ``target [B, T]`` -> ``[B, L, T]`` with
    ``out[b, v, j] = token_logprobs[b, v, target[b, j]]``. Padded target positions must hold a valid id (e.g. the
    pad id); their columns are ignored by the DAG functions."""
    if token_logprobs.dim() != 3 or target.dim() != 2 or target.shape[0] != token_logprobs.shape[0]:
        raise ValueError(f"expected token_logprobs [B, L, V] and target [B, T], got {tuple(token_logprobs.shape)} "
                         f"and {tuple(target.shape)}")
    _check_target_ids(target, token_logprobs.shape[-1])
    batch, vertices, _ = token_logprobs.shape
    index = target[:, None, :].expand(batch, vertices, target.shape[1])
    return token_logprobs.gather(-1, index)


class _VocabularyEmissions(torch.autograd.Function):
    """``log_softmax(hidden @ weight.T + bias)`` gathered at ``index``, chunk by chunk over rows. Only the logits
    are kept for the backward (no log-softmax copy, no zero-filled gradient of the gather): the backward turns each
    kept chunk, in place, into ``d logits = scatter(g) - softmax x sum_j g_j`` and multiplies it out, so it can run
    once (a second backward through the same graph raises). The backward runs in the inputs' dtypes (float32 at
    least), outside any autocast."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, index, rows, keep):
        dtype = torch.promote_types(hidden.dtype, torch.float32)  # float32 at least, like the reference path
        emissions = torch.empty(index.shape, dtype=dtype, device=hidden.device)
        log_normalizer = torch.empty(index.shape[0], dtype=dtype, device=hidden.device)
        ctx.chunks = []
        for start in range(0, hidden.shape[0], rows):
            logits = nn.functional.linear(hidden[start:start + rows], weight, bias).to(dtype)
            log_normalizer[start:start + rows] = logits.logsumexp(-1)
            emissions[start:start + rows] = logits.gather(1, index[start:start + rows]) - \
                log_normalizer[start:start + rows, None]
            if keep:
                ctx.chunks.append(logits)
        ctx.save_for_backward(hidden, weight, bias, index, log_normalizer)
        ctx.rows = rows
        return emissions

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, bias, index, log_normalizer = ctx.saved_tensors
        if ctx.chunks is None:
            raise RuntimeError("vocabulary_emissions: its backward consumes the kept logits and runs once")
        chunks, ctx.chunks, rows = ctx.chunks, None, ctx.rows
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        dtype = log_normalizer.dtype
        grad_weight = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=dtype, device=bias.device) if need_bias else None
        grad = grad.to(dtype)
        for number, start in enumerate(range(0, hidden.shape[0], rows)):
            h, g = hidden[start:start + rows], grad[start:start + rows]
            d_logits, chunks[number] = chunks[number], None  # freed once used
            d_logits.sub_(log_normalizer[start:start + rows, None]).exp_().mul_(-g.sum(-1, keepdim=True))
            d_logits.scatter_add_(1, index[start:start + rows], g)
            if need_hidden:
                grad_hidden[start:start + rows] = d_logits.to(weight.dtype) @ weight
            if need_weight:
                grad_weight.addmm_(d_logits.t(), h.to(dtype))
            if need_bias:
                grad_bias += d_logits.sum(0)
        return (grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype),
                None if grad_bias is None else grad_bias.to(bias.dtype), None, None, None)


def vocabulary_emissions(hidden: torch.Tensor, output_layer: nn.Linear, target: torch.Tensor,
                         budget_bytes: int | None = None) -> torch.Tensor:
    """``target_emissions(log_softmax(output_layer(hidden)), target)`` with one ``[B, L, V]`` tensor instead of
    three: the vocabulary is normalised chunk by chunk, the result holds only the target tokens' log-probs, and
    the logits (kept for a backward only, in chunks of ``budget_bytes``) become their own gradient in place; no
    log-softmax copy, no zero-filled gradient of the gather (at ratio 8 a 4096-token batch has ~30k vertices,
    whose float32 logits take 1 GB each; on CPU, glibc returns such tensors to the kernel and page-faults them
    back at every step). Differentiable with respect to ``hidden`` and the layer's parameters, once.

    Args:
        hidden: ``[B, L, d]`` decoder states of the vertices.
        output_layer: the output projection ``d -> V`` (an ``nn.Linear``).
        target: ``[B, T]`` token ids in ``[0, V)`` (padding must hold a valid id).
        budget_bytes: bound on one chunk's float32 logits (default ``method_base.LOGITS_BUDGET_BYTES``, the chunk
            of decoding's projection too: under glibc's largest mmap threshold, so on CPU the chunks are reused
            heap memory, not pages the kernel zeroes at every step).

    Returns:
        ``[B, L, T]`` float32 ``log P(target[b, j] | vertex v)``."""
    vocab = output_layer.out_features
    if hidden.dim() != 3 or target.dim() != 2 or target.shape[0] != hidden.shape[0]:
        raise ValueError(f"expected hidden [B, L, d] and target [B, T], got {tuple(hidden.shape)} and "
                         f"{tuple(target.shape)}")
    _check_target_ids(target, vocab)
    batch, vertices, width = hidden.shape
    index = target[:, None, :].expand(batch, vertices, target.shape[1]).reshape(batch * vertices, -1)
    rows = chunk_positions(vocab, budget_bytes)
    parameters = [output_layer.weight] + ([] if output_layer.bias is None else [output_layer.bias])
    keep = torch.is_grad_enabled() and any(tensor.requires_grad for tensor in [hidden, *parameters])
    emissions = _VocabularyEmissions.apply(hidden.reshape(-1, width), output_layer.weight, output_layer.bias,
                                           index, rows, keep)  # keep: the logits, for a backward
    return emissions.view(batch, vertices, -1)


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
    return _check_best_inputs(token_logprobs[..., 0], link_logprobs, vertex_lengths)


def _check_best_inputs(vertex_scores: torch.Tensor, link_logprobs: torch.Tensor,
                       vertex_lengths: torch.Tensor) -> torch.Tensor:
    if vertex_scores.dim() != 2:
        raise ValueError(f"vertex_scores must have shape [B, L], got {tuple(vertex_scores.shape)}")
    batch, vertices = vertex_scores.shape
    _check_links(link_logprobs, batch, vertices)
    vertex_lengths = _check_lengths("vertex_lengths", vertex_lengths, batch, vertices)
    if batch and int(vertex_lengths.min()) < 1:
        raise ValueError(f"every row needs at least one vertex to decode, got vertex_lengths {vertex_lengths.tolist()}")
    return vertex_lengths


def _check_vertex_tokens(vertex_scores: torch.Tensor, vertex_tokens: torch.Tensor) -> None:
    if vertex_tokens.shape != vertex_scores.shape:
        raise ValueError(f"vertex_tokens must have the shape of vertex_scores {tuple(vertex_scores.shape)}, got "
                         f"{tuple(vertex_tokens.shape)}")


def _collect(vertices: torch.Tensor, tokens_per_vertex: torch.Tensor, lengths: torch.Tensor, scores: torch.Tensor,
             pad_token_id: int) -> DAGDecodeOutput:
    width = int(lengths.max()) if lengths.numel() else 0
    vertices = vertices[:, :width]
    valid = vertices >= 0
    tokens = tokens_per_vertex.gather(1, vertices.clamp(min=0))
    tokens = torch.where(valid, tokens, torch.full_like(tokens, pad_token_id))
    return DAGDecodeOutput(tokens, lengths, scores, torch.where(valid, vertices, torch.full_like(vertices, -1)))


def dag_walk(vertex_scores: torch.Tensor, vertex_tokens: torch.Tensor, link_logprobs: torch.Tensor,
             vertex_lengths: torch.Tensor, pad_token_id: int = 0,
             lookahead_weight: float | None = None) -> DAGDecodeOutput:
    """Greedy (``lookahead_weight=None``) or lookahead walk from each vertex's best token, the core of
    :func:`dag_greedy` / :func:`dag_lookahead` that decoding uses (no ``[B, L, V]`` tensor needed).

    ``vertex_scores [B, L]`` (log-prob of the best allowed token of each vertex), ``vertex_tokens [B, L]`` (that
    token), ``link_logprobs [B, L, L]``, ``vertex_lengths [B]``. From vertex 0 the next vertex maximises
    ``link[u, v]`` (greedy) or ``link[u, v] + lookahead_weight * vertex_scores[v]`` (lookahead) until the row's last
    vertex; ``scores`` is the path's summed link + token log-prob. The choice at a vertex does not depend on how the
    walk got there, so every vertex's successor is found at once (one max over ``[B, L, L]``) and the walk only
    follows successors."""
    vertex_lengths = _check_best_inputs(vertex_scores, link_logprobs, vertex_lengths)
    _check_vertex_tokens(vertex_scores, vertex_tokens)
    batch, count = vertex_scores.shape
    dtype = _compute_dtype(vertex_scores)
    token_scores = vertex_scores.to(dtype)
    links = _masked_links(link_logprobs, vertex_lengths, dtype)
    choice = links if lookahead_weight is None else links + float(lookahead_weight) * token_scores[:, None, :]
    last = vertex_lengths - 1
    best_value, successor = choice.max(dim=-1)  # [B, L]
    # no finite successor (links all -inf): jump to the last vertex so the walk always ends there
    successor = torch.where(torch.isneginf(best_value), last[:, None], successor)
    current = torch.zeros(batch, dtype=torch.long, device=vertex_scores.device)
    path = torch.full((batch, count), -1, dtype=torch.long, device=vertex_scores.device)
    path[:, 0] = 0
    lengths = torch.ones(batch, dtype=torch.long, device=vertex_scores.device)
    for step in range(1, count):
        active = current != last
        if not bool(active.any()):
            break
        current = torch.where(active, successor.gather(1, current[:, None]).squeeze(1), current)
        path[:, step] = torch.where(active, current, -1)
        lengths = lengths + active.long()
    return _collect(path, vertex_tokens, lengths, path_log_probability(token_scores, links, path), pad_token_id)


def dag_greedy(token_logprobs: torch.Tensor, link_logprobs: torch.Tensor, vertex_lengths: torch.Tensor,
               exclude_ids: Sequence[int] = (), pad_token_id: int = 0) -> DAGDecodeOutput:
    """From vertex 0 follow the most probable link until the row's last vertex; emit the best non-excluded token
    of each visited vertex. ``token_logprobs [B, L, V]``, ``link_logprobs [B, L, L]``, ``vertex_lengths [B]``;
    ``scores`` is the path's summed link + token log-prob."""
    _check_decode_inputs(token_logprobs, link_logprobs, vertex_lengths)
    scores, tokens = _best_tokens(token_logprobs.to(_compute_dtype(token_logprobs)), exclude_ids)
    return dag_walk(scores, tokens, link_logprobs, vertex_lengths, pad_token_id, None)


def dag_lookahead(token_logprobs: torch.Tensor, link_logprobs: torch.Tensor, vertex_lengths: torch.Tensor,
                  exclude_ids: Sequence[int] = (), pad_token_id: int = 0, token_weight: float = 1.0) -> DAGDecodeOutput:
    """Like :func:`dag_greedy`, but the next vertex maximises ``link[u, v] + token_weight * best_token_logprob[v]``
    (DA-Transformer's lookahead decoding; ``token_weight`` is its beta, 1 in the paper)."""
    _check_decode_inputs(token_logprobs, link_logprobs, vertex_lengths)
    scores, tokens = _best_tokens(token_logprobs.to(_compute_dtype(token_logprobs)), exclude_ids)
    return dag_walk(scores, tokens, link_logprobs, vertex_lengths, pad_token_id, float(token_weight))


def dag_viterbi_best(vertex_scores: torch.Tensor, vertex_tokens: torch.Tensor, link_logprobs: torch.Tensor,
                     vertex_lengths: torch.Tensor, length_penalty_exponent: float = 1.0,
                     pad_token_id: int = 0) -> DAGDecodeOutput:
    """The core of :func:`dag_viterbi` from each vertex's best token (``vertex_scores [B, L]``, ``vertex_tokens
    [B, L]``): the path from vertex 0 to the row's last vertex maximising ``(sum of link and token log-probs) /
    n ** length_penalty_exponent`` over every path and length ``n``.

    ``g[n][v] = max_u g[n-1][u] + link[u, v] + s[v]`` is the best ``n``-vertex path ending at ``v``; the best ``n``
    per row is picked after the DP and the path is read back through the stored back-pointers."""
    vertex_lengths = _check_best_inputs(vertex_scores, link_logprobs, vertex_lengths)
    _check_vertex_tokens(vertex_scores, vertex_tokens)
    if not math.isfinite(length_penalty_exponent):
        raise ValueError(f"length_penalty_exponent must be finite, got {length_penalty_exponent}")
    batch, count = vertex_scores.shape
    dtype = _compute_dtype(vertex_scores)
    device = vertex_scores.device
    token_scores = vertex_scores.to(dtype)
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
    return _collect(path, vertex_tokens, lengths, scores, pad_token_id)


def dag_viterbi(token_logprobs: torch.Tensor, link_logprobs: torch.Tensor, vertex_lengths: torch.Tensor,
                length_penalty_exponent: float = 1.0, exclude_ids: Sequence[int] = (),
                pad_token_id: int = 0) -> DAGDecodeOutput:
    """The path from vertex 0 to the row's last vertex maximising ``(sum of link and best-token log-probs) /
    n ** length_penalty_exponent`` over every path and every length ``n`` (visited vertices = output tokens).

    Each vertex's token is fixed first (best non-excluded token), then :func:`dag_viterbi_best`.
    ``token_logprobs [B, L, V]`` -> :class:`DAGDecodeOutput`.
    """
    _check_decode_inputs(token_logprobs, link_logprobs, vertex_lengths)
    if not math.isfinite(length_penalty_exponent):
        raise ValueError(f"length_penalty_exponent must be finite, got {length_penalty_exponent}")
    scores, tokens = _best_tokens(token_logprobs.to(_compute_dtype(token_logprobs)), exclude_ids)
    return dag_viterbi_best(scores, tokens, link_logprobs, vertex_lengths, length_penalty_exponent, pad_token_id)


# ----------------------------------------------------------------------------------------------------------------
# the `dag` method


@dataclass
class DAGTrainingOptions(GlancingOptions):
    """DA-Transformer's training options (in `NATConfig.method_options`): the glancing schedule (off by default;
    glancing reveals reference tokens at the vertices of their best path), the vertices per source token and the
    heads of the gated link scorer."""

    upsample_ratio: float = 4.0  # decoder vertices per source token (end-of-sentence included); 8 in the paper
    link_heads: int = 4  # heads of `DAGLinkScorer` (must divide d_model)

    def validate(self, config=None) -> None:
        """ValueError naming the option."""
        super().validate(config)
        ratio = self.upsample_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio <= 0:
            raise ValueError(f"NATConfig: method_options `upsample_ratio` must be a finite number > 0, got {ratio!r}")
        self.upsample_ratio = float(ratio)
        try:
            self.link_heads = check_integer("link_heads", self.link_heads, 1)
        except ValueError:
            raise ValueError(f"NATConfig: method_options `link_heads` must be an integer >= 1, got "
                             f"{self.link_heads!r}") from None


DAG_DECODING_STRATEGIES = ("greedy", "lookahead", "viterbi")


def _check_number(name: str, value, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return float(value)


@dataclass
class DAGDecodingOptions:
    """Decoding options of DA-Transformer (a model's `generation_config` holds its defaults)."""

    decoding_strategy: str = field(default="lookahead", metadata={
        "help": "path through the DAG (DAG: greedy, lookahead or viterbi)"})
    viterbi_length_exponent: float = field(default=1.0, metadata={
        "help": "Viterbi length normalisation: path score / length ** exponent (DAG)"})
    lookahead_weight: float = field(default=1.0, metadata={
        "help": "lookahead's weight of the next vertex's token log-probability (DAG, beta)"})

    def validate(self, config=None) -> None:
        """ValueError naming the option when it is malformed."""
        if not isinstance(self.decoding_strategy, str) or self.decoding_strategy not in DAG_DECODING_STRATEGIES:
            raise ValueError(f"decoding_strategy must be one of {list(DAG_DECODING_STRATEGIES)}, "
                             f"got {self.decoding_strategy!r}")
        self.viterbi_length_exponent = _check_number("viterbi_length_exponent", self.viterbi_length_exponent)
        self.lookahead_weight = _check_number("lookahead_weight", self.lookahead_weight, 0.0)


def bracketed_emissions(emissions: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """``emissions [B, L, T]`` of the target tokens -> ``[B, L, T + 2]``: a start column before them and an end
    column after each row's last token, both 0 (log 1), padding columns 0 too.

    As in DA-Transformer, whose graph emits ``<bos>`` at vertex 0 and ``<eos>`` at the last vertex, a path's first
    and last vertices are the graph's fixed ends and the target's tokens lie on the vertices in between. The ends
    emit nothing here (probability 1): the first and last target tokens are chosen by links, which is what lets a
    graph hold several modes (e.g. ascending or descending order) that share no vertex. A row of ``T_b`` tokens
    takes ``T_b + 2`` vertices."""
    inner = emissions.masked_fill(~target_mask[:, None, :], 0.0)
    return torch.nn.functional.pad(inner, (1, 1))


class DAGMethod(NATMethod):
    """DA-Transformer (Huang et al., 2022): the decoder runs over `ceil(upsample_ratio x source length)` vertices
    (`<mask>` inputs, or the copied source in copy mode); `model.model.link_scorer` gives the links between them.
    Vertex 0 and each row's last vertex are the graph's start and end (DA-Transformer's `<bos>` / `<eos>`, here
    emitting nothing: :func:`bracketed_emissions`); a target of T tokens is a path through T vertices between
    them. The loss is `-log P(y | x) / (T + 2)` summed over every path (:func:`dag_loss` on the bracketed
    emissions; no label smoothing), targets longer than `vertices - 2` skipped and counted. Decoding is one pass:
    greedy, lookahead (default) or Viterbi over the same graph, the ends' tokens dropped."""

    name = "dag"
    summary = ("DA-Transformer: the upsampled decoder positions are the vertices of a directed acyclic graph with "
               "learned links, trained on the sum over all its paths; one pass, then a path is chosen (greedy, "
               "lookahead or Viterbi)")
    paper = 'Huang et al., 2022, "Directed Acyclic Transformer for Non-Autoregressive Machine Translation"'
    Options = DAGDecodingOptions
    TrainingOptions = DAGTrainingOptions

    def validate_config(self, config) -> None:
        options = self.training_options(config)
        if config.d_model % options.link_heads:
            raise ValueError(f"NATConfig: method_options `link_heads` ({options.link_heads}) must divide `d_model` "
                             f"({config.d_model})")
        needed = math.ceil(options.upsample_ratio * config.max_source_positions - 1e-9)
        if config.max_target_positions < needed:
            raise ValueError(f"NATConfig: `max_target_positions` ({config.max_target_positions}) must be >= "
                             f"upsample_ratio ({options.upsample_ratio}) x `max_source_positions` "
                             f"({config.max_source_positions}) = {needed}: the DAG's vertices are decoder positions")

    def heads(self, config) -> dict[str, nn.Module]:
        return {"link_scorer": DAGLinkScorer(config.d_model, self.training_options(config).link_heads)}

    def is_single_pass(self, options: dict) -> bool:
        return True

    def plan_vertices(self, model, context) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The decoder plan: vertex counts `[B]` (`ceil(ratio x source length)`, end-of-sentence included), the
        vertex mask `[B, L]` and `<mask>` decoder inputs `[B, L]` over the vertices."""
        config = model.config
        ratio = self.training_options(config).upsample_ratio
        vertex_lengths = upsampled_lengths(context.attention_mask.sum(-1), ratio, config.max_target_positions)
        count = max(int(vertex_lengths.max()), 1)
        vertex_mask = torch.arange(count, device=vertex_lengths.device)[None, :] < vertex_lengths[:, None]
        decoder_input_ids = torch.full(vertex_mask.shape, config.mask_token_id, dtype=torch.long,
                                       device=vertex_lengths.device)
        return vertex_lengths, vertex_mask, decoder_input_ids

    def graph(self, model, decoder_input_ids: torch.Tensor, vertex_mask: torch.Tensor, context
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoder pass: hidden states `[B, L, d]` and link log-probs `[B, L, L]` (the vocabulary projection
        is left to the caller: `vocabulary_emissions` normalises it chunk by chunk)."""
        hidden = model.model.decode(decoder_input_ids, vertex_mask, context)
        return hidden, model.model.link_scorer(hidden, vertex_mask)

    def loss(self, model, context, target: torch.Tensor, target_mask: torch.Tensor, step: int | None = None
             ) -> LossOutput:
        """The DAG loss (mean over kept rows of `-log P(y | x) / (T + 2)`), term `token`; count `skipped_targets`
        (rows whose `T + 2` exceeds their vertices).

        With a glancing ratio > 0 (`GlancingOptions` schedule at `step`), a first pass without gradient finds the
        most probable path of the reference (`dag_best_alignment`); the reference tokens whose vertex predicts
        another token are the mismatches, `round(ratio x mismatches)` reference tokens are revealed as decoder
        inputs at their vertices (`<mask>` elsewhere) for the second pass, which gives the loss (DA-Transformer's
        glancing on the path).

        In training mode the token log-probs come from `vocabulary_emissions` (no `[B, L, V]` log-prob tensor)
        and the returned `logits` are None; in eval mode they are the second pass's `[B, L, V]` vertex logits,
        whose log-softmax gives the token log-probs (the vocabulary is projected once either way)."""
        config = model.config
        vertex_lengths, vertex_mask, decoder_input_ids = self.plan_vertices(model, context)
        target_lengths = target_mask.sum(-1)
        target = target.masked_fill(~target_mask, config.pad_token_id)  # any valid id on padding
        ratio = self.training_options(config).loss_ratio(model.training, step)
        if ratio > 0:
            with torch.no_grad():
                hidden, links = self.graph(model, decoder_input_ids, vertex_mask, context)
                emissions = bracketed_emissions(vocabulary_emissions(hidden, model.lm_head, target), target_mask)
                path, _ = dag_best_alignment(emissions, links, vertex_lengths, target_lengths + 2)
                path = path[:, 1:-1]  # [B, T] the vertex of each target token (-1: padding, infeasible row)
                aligned = path >= 0  # on target positions of feasible rows
                at_path = hidden.gather(1, path.clamp(min=0)[..., None].expand(-1, -1, hidden.shape[-1]))
                predicted, _ = predict_tokens(at_path, model.lm_head, special_token_ids(config), with_scores=False)
                revealed = glancing_reveal((predicted != target) & aligned, target_mask & aligned, ratio)
                count = decoder_input_ids.shape[1]
                slots = torch.where(revealed, path, count)  # unrevealed tokens go to a discarded extra column
                extended = torch.cat([decoder_input_ids, decoder_input_ids[:, :1]], dim=1)
                decoder_input_ids = extended.scatter(1, slots, torch.where(revealed, target, config.mask_token_id)
                                                     )[:, :count]
        hidden, links = self.graph(model, decoder_input_ids, vertex_mask, context)
        if model.training:
            logits, token_emissions = None, vocabulary_emissions(hidden, model.lm_head, target)
        else:  # the returned logits are projected anyway: their log-softmax gives the emissions (one projection)
            logits = model.lm_head(hidden)
            token_emissions = target_emissions(torch.log_softmax(logits.float(), -1), target)
        emissions = bracketed_emissions(token_emissions, target_mask)
        token_loss, skipped = dag_loss(emissions, links, vertex_lengths, target_lengths + 2)
        return LossOutput(total=token_loss, terms={"token": token_loss}, logits=logits,
                          counts={"skipped_targets": skipped})

    def decode(self, model, input_ids, attention_mask, options, forced_lengths=None) -> Hypotheses:
        """Encoder once, one decoder pass over the vertices, each vertex's best token (special ids excluded; the
        projection runs in bounded chunks, `method_base.predict_tokens`), the links, then the path of
        `decoding_strategy` from vertex 0 to the last vertex (the ends score 0 and their tokens are dropped:
        :func:`bracketed_emissions`; Viterbi's length counts every visited vertex). The score is the path's
        log-probability (links and tokens) per visited vertex, before truncation to `max_length` tokens."""
        if forced_lengths is not None:
            raise ValueError("forced_lengths does not apply to method 'dag': its output length is the length of the "
                             "decoded path")
        config = model.config
        encoder_hidden_states = model.model.encode(input_ids, attention_mask)
        context = model.model.make_context(input_ids, attention_mask, encoder_hidden_states)
        vertex_lengths, vertex_mask, decoder_input_ids = self.plan_vertices(model, context)
        tokens, scores, links = self.vertex_predictions(model, decoder_input_ids, vertex_mask, vertex_lengths,
                                                        context)
        allowed = link_mask(vertex_lengths, vertex_mask.shape[1])
        check_finite({"link scores": links.masked_fill(~allowed, 0.0),
                      "token scores": scores.masked_fill(~vertex_mask, 0.0)})
        strategy = options["decoding_strategy"]
        if strategy == "viterbi":
            out = dag_viterbi_best(scores, tokens, links, vertex_lengths, options["viterbi_length_exponent"],
                                   config.pad_token_id)
        else:
            weight = options["lookahead_weight"] if strategy == "lookahead" else None
            out = dag_walk(scores, tokens, links, vertex_lengths, config.pad_token_id, weight)
        mean = path_log_probability(scores, links, out.vertices) / out.lengths.clamp(min=1)
        empty_source = (attention_mask & (input_ids != config.eos_token_id)).sum(-1) == 0
        lengths = (out.lengths - 2).clamp(min=0, max=options["max_length"]).masked_fill(empty_source, 0)
        return Hypotheses(tokens=out.tokens[:, 1:], lengths=lengths, scores=mean)

    def vertex_predictions(self, model, decoder_input_ids: torch.Tensor, vertex_mask: torch.Tensor,
                           vertex_lengths: torch.Tensor, context) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decoder pass: each vertex's best token and its log-prob `[B, L]` (0 at the graph's ends, which emit
        nothing) and the links `[B, L, L]`."""
        hidden = model.model.decode(decoder_input_ids, vertex_mask, context)
        tokens, scores = predict_tokens(hidden, model.lm_head, special_token_ids(model.config))  # [B, L] each
        positions = torch.arange(vertex_mask.shape[1], device=vertex_mask.device)[None, :]
        ends = (positions == 0) | (positions == (vertex_lengths - 1)[:, None])
        return tokens, scores.masked_fill(ends, 0.0), model.model.link_scorer(hidden, vertex_mask)

    def timing_pass(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Encoder, one decoder pass over the vertices, per-vertex best tokens, links and the lookahead walk;
        returns the path's tokens."""
        encoder_hidden_states = model.model.encode(input_ids, attention_mask)
        context = model.model.make_context(input_ids, attention_mask, encoder_hidden_states)
        vertex_lengths, vertex_mask, decoder_input_ids = self.plan_vertices(model, context)
        tokens, scores, links = self.vertex_predictions(model, decoder_input_ids, vertex_mask, vertex_lengths,
                                                        context)
        return dag_walk(scores, tokens, links, vertex_lengths, model.config.pad_token_id, 1.0).tokens[:, 1:]


def path_log_probability(vertex_scores: torch.Tensor, link_logprobs: torch.Tensor, vertices: torch.Tensor
                         ) -> torch.Tensor:
    """Summed token and link log-probs of each path: ``vertex_scores [B, L]``, ``link_logprobs [B, L, L]``,
    ``vertices [B, N]`` (visited vertices, -1 padded) -> ``[B]``."""
    valid = vertices >= 0
    safe = vertices.clamp(min=0)
    tokens = torch.where(valid, vertex_scores.gather(1, safe), 0.0).sum(-1)
    if vertices.shape[1] < 2:
        return tokens
    steps = valid[:, 1:]
    link = link_logprobs.gather(1, safe[:, :-1, None].expand(-1, -1, link_logprobs.shape[2]))  # [B, N-1, L]
    link = link.gather(2, safe[:, 1:, None]).squeeze(-1)  # [B, N-1]
    return tokens + torch.where(steps, link, 0.0).sum(-1)
