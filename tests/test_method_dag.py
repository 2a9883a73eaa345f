"""The DAG (DA-Transformer) math against brute-force enumeration of every path on tiny random inputs."""

import itertools
import math

import pytest
import torch

from nat_hf.method_dag import (
    DAGLinkScorer,
    dag_best_alignment,
    dag_greedy,
    dag_log_likelihood,
    dag_lookahead,
    dag_loss,
    dag_viterbi,
    target_emissions,
)

F64 = torch.float64


def paths(num_vertices: int, size: int) -> list[tuple[int, ...]]:
    """Every increasing vertex sequence of `size` vertices from 0 to num_vertices - 1."""
    if size == 1:
        return [(0,)] if num_vertices == 1 else []
    if size < 1 or size > num_vertices:
        return []
    return [(0, *middle, num_vertices - 1) for middle in itertools.combinations(range(1, num_vertices - 1), size - 2)]


def path_link_sum(links: torch.Tensor, path: tuple[int, ...]) -> torch.Tensor:
    return sum((links[u, v] for u, v in zip(path, path[1:], strict=False)), torch.zeros((), dtype=links.dtype))


def brute_log_likelihood(emissions: torch.Tensor, links: torch.Tensor, num_vertices: int, size: int) -> torch.Tensor:
    """log sum over paths of prod links * prod emissions, for one unpadded row (emissions [L, T], links [L, L])."""
    terms = [path_link_sum(links, p) + sum(emissions[v, j] for j, v in enumerate(p)) for p in paths(num_vertices, size)]
    if not terms:
        return torch.tensor(float("-inf"), dtype=emissions.dtype)
    return torch.logsumexp(torch.stack(terms), 0)


def random_row(num_vertices: int, size: int, vocab: int = 5, generator: torch.Generator | None = None):
    token_logprobs = torch.randn(num_vertices, vocab, dtype=F64, generator=generator).log_softmax(-1)
    links = torch.randn(num_vertices, num_vertices, dtype=F64, generator=generator)
    target = torch.randint(0, vocab, (size,), generator=generator)
    return token_logprobs, links, target


def pad_batch(rows, vertices: int, targets: int, filler: float = 50.0):
    """Stack per-row (token_logprobs, links, target) into a right-padded batch whose padding holds garbage."""
    vocab = rows[0][0].shape[-1]
    token_logprobs = torch.full((len(rows), vertices, vocab), filler, dtype=F64)
    links = torch.full((len(rows), vertices, vertices), filler, dtype=F64)
    target = torch.zeros(len(rows), targets, dtype=torch.long)
    for b, (tok, lin, tgt) in enumerate(rows):
        token_logprobs[b, : tok.shape[0]] = tok
        links[b, : lin.shape[0], : lin.shape[1]] = lin
        target[b, : tgt.shape[0]] = tgt
    vertex_lengths = torch.tensor([r[0].shape[0] for r in rows])
    target_lengths = torch.tensor([r[2].shape[0] for r in rows])
    return token_logprobs, links, target, vertex_lengths, target_lengths


def test_target_emissions_gathers_target_tokens_and_rejects_out_of_range_ids():
    token_logprobs = torch.randn(2, 3, 7).log_softmax(-1)
    target = torch.tensor([[1, 6], [0, 3]])
    out = target_emissions(token_logprobs, target)
    assert out.shape == (2, 3, 2)
    for b, v, j in itertools.product(range(2), range(3), range(2)):
        assert out[b, v, j] == token_logprobs[b, v, target[b, j]]
    with pytest.raises(ValueError, match="target ids"):
        target_emissions(token_logprobs, torch.tensor([[1, 7], [0, 0]]))


@pytest.mark.parametrize("num_vertices", [1, 2, 3, 4, 5, 6])
def test_log_likelihood_equals_brute_force_sum_over_paths(num_vertices):
    generator = torch.Generator().manual_seed(num_vertices)
    for size in range(1, num_vertices + 1):
        tok, links, target = random_row(num_vertices, size, generator=generator)
        emissions = target_emissions(tok[None], target[None])
        got, infeasible = dag_log_likelihood(emissions, links[None], torch.tensor([num_vertices]),
                                             torch.tensor([size]))
        expected = brute_log_likelihood(emissions[0], links, num_vertices, size)
        if paths(num_vertices, size):
            torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=0)
            assert not infeasible[0]
        else:  # one target token for a graph of more than one vertex: no path
            assert got[0] == float("-inf") and infeasible[0]


def test_padded_batch_rows_equal_their_own_unpadded_computation_and_gradients():
    generator = torch.Generator().manual_seed(1)
    shapes = [(6, 4), (3, 2), (5, 5), (1, 1), (4, 3)]
    rows = [random_row(n, t, generator=generator) for n, t in shapes]
    tok, links, target, vertex_lengths, target_lengths = pad_batch(rows, vertices=7, targets=6)
    emissions = target_emissions(tok, target).requires_grad_(True)
    links.requires_grad_(True)
    batch_ll, infeasible = dag_log_likelihood(emissions, links, vertex_lengths, target_lengths)
    assert not infeasible.any()
    batch_ll.sum().backward()
    for b, (row_tok, row_links, row_target) in enumerate(rows):
        n, t = row_tok.shape[0], row_target.shape[0]
        row_em = target_emissions(row_tok[None], row_target[None]).requires_grad_(True)
        row_ln = row_links[None].clone().requires_grad_(True)
        alone, _ = dag_log_likelihood(row_em, row_ln, torch.tensor([n]), torch.tensor([t]))
        alone.sum().backward()
        torch.testing.assert_close(batch_ll[b], alone[0], atol=1e-10, rtol=0)
        torch.testing.assert_close(batch_ll[b], brute_log_likelihood(row_em[0].detach(), row_links, n, t),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(emissions.grad[b, :n, :t], row_em.grad[0])
        row_link_grad = torch.zeros_like(row_ln) if row_ln.grad is None else row_ln.grad  # one vertex: no link used
        torch.testing.assert_close(links.grad[b, :n, :n], row_link_grad[0])
        assert (emissions.grad[b, n:] == 0).all() and (emissions.grad[b, :, t:] == 0).all()  # padding is ignored
        assert (links.grad[b, n:] == 0).all() and (links.grad[b, :, n:] == 0).all()


def test_infeasible_rows_are_minus_inf_counted_and_the_loss_stays_finite():
    generator = torch.Generator().manual_seed(2)
    rows = [random_row(4, 3, generator=generator),  # feasible
            random_row(3, 5, generator=generator),  # target longer than the graph
            random_row(4, 1, generator=generator),  # one token, four vertices: no path
            random_row(5, 4, generator=generator)]  # feasible
    tok, links, target, vertex_lengths, target_lengths = pad_batch(rows, vertices=6, targets=6)
    # a fifth row with an empty target
    tok = torch.cat([tok, tok[:1]])
    links = torch.cat([links, links[:1]])
    target = torch.cat([target, target[:1]])
    vertex_lengths = torch.cat([vertex_lengths, torch.tensor([4])])
    target_lengths = torch.cat([target_lengths, torch.tensor([0])])
    emissions = target_emissions(tok, target).requires_grad_(True)
    links.requires_grad_(True)
    ll, infeasible = dag_log_likelihood(emissions, links, vertex_lengths, target_lengths)
    assert infeasible.tolist() == [False, True, True, False, True]
    assert torch.isneginf(ll[infeasible]).all() and torch.isfinite(ll[~infeasible]).all()
    loss, skipped = dag_loss(emissions, links, vertex_lengths, target_lengths)
    assert int(skipped) == 3
    expected = -(ll[0] / 3 + ll[3] / 4) / 2
    torch.testing.assert_close(loss, expected.detach())
    loss.backward()
    assert torch.isfinite(emissions.grad).all() and torch.isfinite(links.grad).all()
    assert (emissions.grad[[1, 2, 4]] == 0).all() and (links.grad[[1, 2, 4]] == 0).all()
    assert emissions.grad[0].abs().sum() > 0


def test_loss_of_an_all_infeasible_batch_is_zero_with_finite_zero_gradient():
    emissions = torch.randn(2, 3, 5, dtype=F64, requires_grad=True)
    links = torch.randn(2, 3, 3, dtype=F64, requires_grad=True)
    loss, skipped = dag_loss(emissions, links, torch.tensor([3, 2]), torch.tensor([5, 1]))
    assert loss.item() == 0.0 and int(skipped) == 2
    loss.backward()
    assert (emissions.grad == 0).all() and (links.grad == 0).all()


def test_loss_gradient_equals_autograd_of_the_brute_force_sum_and_passes_gradcheck():
    generator = torch.Generator().manual_seed(3)
    emissions = torch.randn(2, 5, 4, dtype=F64, generator=generator, requires_grad=True)
    links = torch.randn(2, 5, 5, dtype=F64, generator=generator, requires_grad=True)
    vertex_lengths, target_lengths = torch.tensor([5, 4]), torch.tensor([4, 3])
    loss, skipped = dag_loss(emissions, links, vertex_lengths, target_lengths)
    assert int(skipped) == 0
    got = torch.autograd.grad(loss, (emissions, links))
    brute = -sum(brute_log_likelihood(emissions[b], links[b], int(vertex_lengths[b]), int(target_lengths[b]))
                 / target_lengths[b] for b in range(2)) / 2
    torch.testing.assert_close(loss, brute, atol=1e-10, rtol=0)
    expected = torch.autograd.grad(brute, (emissions, links))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=0)
    assert torch.autograd.gradcheck(lambda e, link: dag_loss(e, link, vertex_lengths, target_lengths)[0],
                                    (emissions.detach().requires_grad_(), links.detach().requires_grad_()))


def test_best_alignment_is_the_brute_force_most_probable_path():
    generator = torch.Generator().manual_seed(4)
    shapes = [(6, 4), (5, 2), (4, 4), (1, 1), (3, 5)]
    rows = [random_row(n, t, generator=generator) for n, t in shapes]
    tok, links, target, vertex_lengths, target_lengths = pad_batch(rows, vertices=6, targets=5)
    emissions = target_emissions(tok, target)
    alignment, score = dag_best_alignment(emissions, links, vertex_lengths, target_lengths)
    for b, (n, t) in enumerate(shapes):
        candidates = paths(n, t)
        if not candidates:
            assert (alignment[b] == -1).all() and score[b] == float("-inf")
            continue
        values = [path_link_sum(links[b], p) + sum(emissions[b, v, j] for j, v in enumerate(p)) for p in candidates]
        best = max(range(len(values)), key=lambda i: values[i])
        assert alignment[b, :t].tolist() == list(candidates[best]) and (alignment[b, t:] == -1).all()
        torch.testing.assert_close(score[b], values[best], atol=1e-10, rtol=0)


def brute_viterbi(tok: torch.Tensor, links: torch.Tensor, exponent: float, exclude: list[int]):
    masked = tok.clone()
    masked[:, exclude] = float("-inf")
    best_scores, best_tokens = masked.max(-1)
    n = tok.shape[0]
    options = []
    for size in range(1, n + 1):
        for p in paths(n, size):
            raw = path_link_sum(links, p) + sum(best_scores[v] for v in p)
            options.append((raw / size**exponent, p))
    score, path = max(options, key=lambda o: o[0].item())
    return score, list(path), best_tokens[list(path)].tolist()


@pytest.mark.parametrize("exponent", [0.0, 1.0, 0.5])
def test_viterbi_path_and_score_equal_brute_force_over_every_path_and_length(exponent):
    generator = torch.Generator().manual_seed(5)
    shapes = [6, 3, 1, 5, 2, 4]
    rows = [random_row(n, 1, vocab=6, generator=generator) for n in shapes]
    tok, links, _, vertex_lengths, _ = pad_batch(rows, vertices=6, targets=1)
    exclude = [0, 2]
    out = dag_viterbi(tok, links, vertex_lengths, exponent, exclude_ids=exclude, pad_token_id=1)
    for b, n in enumerate(shapes):
        score, path, tokens = brute_viterbi(tok[b, :n], links[b, :n, :n], exponent, exclude)
        length = len(path)
        assert out.lengths[b] == length
        assert out.vertices[b, :length].tolist() == path and (out.vertices[b, length:] == -1).all()
        assert out.tokens[b, :length].tolist() == tokens and (out.tokens[b, length:] == 1).all()
        assert not set(tokens) & set(exclude)
        torch.testing.assert_close(out.scores[b], score, atol=1e-10, rtol=0)


def reference_walk(tok: torch.Tensor, links: torch.Tensor, lookahead: bool):
    """One row, one step at a time, in plain Python."""
    n = tok.shape[0]
    best_scores, best_tokens = tok.max(-1)
    path, score = [0], best_scores[0].item()
    while path[-1] != n - 1:
        u = path[-1]
        values = {v: links[u, v].item() + (best_scores[v].item() if lookahead else 0.0) for v in range(u + 1, n)}
        v = max(values, key=values.get)
        score += links[u, v].item() + best_scores[v].item()
        path.append(v)
    return path, [best_tokens[v].item() for v in path], score


@pytest.mark.parametrize("lookahead", [False, True])
def test_greedy_and_lookahead_equal_a_per_step_reference(lookahead):
    generator = torch.Generator().manual_seed(6)
    shapes = [6, 1, 4, 2, 5]
    rows = [random_row(n, 1, vocab=6, generator=generator) for n in shapes]
    tok, links, _, vertex_lengths, _ = pad_batch(rows, vertices=6, targets=1)
    decode = dag_lookahead if lookahead else dag_greedy
    out = decode(tok, links, vertex_lengths, pad_token_id=3)
    for b, n in enumerate(shapes):
        path, tokens, score = reference_walk(tok[b, :n], links[b, :n, :n], lookahead)
        length = len(path)
        assert out.lengths[b] == length and out.vertices[b, :length].tolist() == path
        assert out.tokens[b, :length].tolist() == tokens and (out.tokens[b, length:] == 3).all()
        assert out.scores[b].item() == pytest.approx(score, abs=1e-9)
    if lookahead:  # lookahead differs from greedy here: it prefers a vertex with a confident token
        tok2 = torch.full((1, 3, 2), math.log(0.5), dtype=F64)
        tok2[0, 1] = torch.tensor([0.0, float("-inf")])  # vertex 1: a certain token
        links2 = torch.tensor([[[0.0, math.log(0.4), math.log(0.6)], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]], dtype=F64)
        tok2[0, 2] = torch.tensor([math.log(0.1), math.log(0.9)], dtype=F64) - 5.0  # vertex 2: unlikely tokens
        greedy = dag_greedy(tok2, links2, torch.tensor([3]))
        look = dag_lookahead(tok2, links2, torch.tensor([3]))
        assert greedy.vertices[0].tolist() == [0, 2] and look.vertices[0].tolist() == [0, 1, 2]


@pytest.mark.parametrize("num_heads", [1, 2])
def test_link_scorer_rows_are_normalised_over_allowed_links_and_minus_inf_elsewhere(num_heads):
    torch.manual_seed(7)
    scorer = DAGLinkScorer(8, num_heads=num_heads).double()
    hidden = torch.randn(3, 5, 8, dtype=F64, requires_grad=True)
    lengths = torch.tensor([5, 3, 1])
    mask = torch.arange(5)[None] < lengths[:, None]
    links = scorer(hidden, mask)
    assert links.shape == (3, 5, 5) and not torch.isnan(links).any()
    for b, n in enumerate(lengths.tolist()):
        for u in range(5):
            allowed = [v for v in range(5) if u < v < n]
            others = [v for v in range(5) if v not in allowed]
            assert torch.isneginf(links[b, u, others]).all()
            if allowed:
                assert torch.isfinite(links[b, u, allowed]).all()
                torch.testing.assert_close(links[b, u, allowed].exp().sum(), torch.tensor(1.0, dtype=F64))
    finite = torch.isfinite(links)
    (links[finite] * torch.randn(int(finite.sum()), dtype=F64)).sum().backward()
    assert torch.isfinite(hidden.grad).all() and hidden.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in scorer.parameters())
    # the DAG loss on the scorer's links (with -inf entries) keeps every gradient finite
    hidden.grad = None
    scorer.zero_grad()
    emissions = torch.randn(3, 5, 4, dtype=F64).log_softmax(1)
    loss, skipped = dag_loss(emissions, scorer(hidden, mask), lengths, torch.tensor([4, 3, 1]))
    assert int(skipped) == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(hidden.grad).all() and all(torch.isfinite(p.grad).all() for p in scorer.parameters())


def test_bad_inputs_raise_value_errors_naming_the_problem():
    scorer = DAGLinkScorer(8)
    with pytest.raises(ValueError, match="right-padded"):
        scorer(torch.randn(1, 3, 8), torch.tensor([[True, False, True]]))
    with pytest.raises(ValueError, match="divisible"):
        DAGLinkScorer(8, num_heads=3)
    emissions, links = torch.randn(1, 3, 2), torch.randn(1, 3, 3)
    with pytest.raises(ValueError, match="target_lengths"):
        dag_log_likelihood(emissions, links, torch.tensor([3]), torch.tensor([3]))
    with pytest.raises(ValueError, match="vertex_lengths"):
        dag_loss(emissions, links, torch.tensor([4]), torch.tensor([2]))
    with pytest.raises(ValueError, match="link_logprobs"):
        dag_log_likelihood(emissions, torch.randn(1, 3, 4), torch.tensor([3]), torch.tensor([2]))
    with pytest.raises(ValueError, match="at least one vertex"):
        dag_viterbi(torch.randn(1, 3, 4), links, torch.tensor([0]))
    with pytest.raises(ValueError, match="exclude_ids"):
        dag_greedy(torch.randn(1, 3, 4), links, torch.tensor([3]), exclude_ids=[4])


def test_half_precision_inputs_are_computed_in_float32():
    generator = torch.Generator().manual_seed(8)
    emissions = torch.randn(2, 5, 4, dtype=F64, generator=generator).log_softmax(1)
    links = torch.randn(2, 5, 5, dtype=F64, generator=generator)
    lengths = (torch.tensor([5, 4]), torch.tensor([4, 3]))
    exact, _ = dag_log_likelihood(emissions, links, *lengths)
    half, infeasible = dag_log_likelihood(emissions.bfloat16(), links.bfloat16(), *lengths)
    assert half.dtype == torch.float32 and not infeasible.any()
    torch.testing.assert_close(half.double(), exact, atol=0.05, rtol=0)  # only the bf16 rounding of the inputs
