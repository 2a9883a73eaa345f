"""Speculative greedy decoding of a Hugging Face encoder-decoder AR model with a NAT drafter (Xia et al., 2023,
"Speculative Decoding: Exploiting Speculative Execution for Accelerating Seq2seq Generation"; Ge et al., 2022,
"Lossless Acceleration for Seq2seq Generation with Aggressive Decoding").

Each round the NAT drafts, in one parallel decoder pass, the tokens after the prefix the AR model has accepted
(the prefix is given to the NAT as observed decoder input, the rest `<mask>`); the AR model scores the whole
block in ONE forward pass over its cache; the longest drafted prefix that equals the AR's own greedy choices is
kept, plus the AR's next token; the AR cache is cropped to what was verified. The output is the AR model's greedy
output by construction: every kept token is the AR's argmax given the kept tokens before it, after the same
logits processors and stopping criteria as greedy search.

Use it from the AR model's own `generate`, the transformers way (`custom_generate`, a callable: transformers 5
then prepares encoder outputs, the cache, logits processors and stopping criteria exactly as for greedy search and
hands the loop to us; assisted generation's `CandidateGenerator` is chosen inside transformers by private
`_get_candidate_generator` and only supports batch size 1, so a custom drafter cannot be plugged in there):

    teacher.generate(**batch, custom_generate=speculative_generate, drafter=nat_model, max_new_tokens=128)

Batches: every row advances by its own accepted tokens. The AR cache has one length for the whole batch (the
shortest verified prefix); a row that is ahead feeds its verified-but-uncached tokens again in front of its next
draft (they are verified again, at no extra forward pass). `SpeculativeStats` records per sentence the AR forward
passes (rounds), drafted and accepted tokens.
"""

from dataclasses import dataclass, field

import torch
from transformers.generation.utils import GenerateEncoderDecoderOutput

from .method_base import DecodingState, lowest_scoring_positions, methods_predicting_target_positions
from .method_cmlm import refine
from .methods import METHODS

UNSUPPORTED_OUTPUTS = ("output_scores", "output_logits", "output_attentions", "output_hidden_states")


@dataclass
class SpeculativeStats:
    """Per-sentence counts of speculative decoding, appended by `speculative_generate` (one entry per sentence,
    in batch order, call after call)."""

    ar_forward_passes: list[int] = field(default_factory=list)  # = rounds in which the sentence was unfinished
    drafted_tokens: list[int] = field(default_factory=list)  # NAT tokens offered to the AR (end-of-sentence incl.)
    accepted_tokens: list[int] = field(default_factory=list)  # drafted tokens the AR kept
    output_tokens: list[int] = field(default_factory=list)  # generated tokens (end-of-sentence incl.)

    def summary(self) -> dict:
        """Totals and means over the recorded sentences: `tokens_per_round` is the mean number of tokens a round
        adds (accepted draft + the AR's own token), `accepted_per_round` the mean accepted draft tokens."""
        rounds = sum(self.ar_forward_passes)
        return {
            "sentences": len(self.ar_forward_passes),
            "ar_forward_passes": rounds,
            "ar_forward_passes_per_sentence": rounds / max(len(self.ar_forward_passes), 1),
            "tokens_per_round": sum(self.output_tokens) / max(rounds, 1),
            "accepted_per_round": sum(self.accepted_tokens) / max(rounds, 1),
            "acceptance_rate": sum(self.accepted_tokens) / max(sum(self.drafted_tokens), 1),
        }


def check_drafter_method(model) -> None:
    """A drafter's method must place tokens at target positions, after a known prefix."""
    if not model.nat_method.predicts_target_positions:
        raise ValueError(f"a drafter must predict target positions from a known prefix (methods "
                         f"{', '.join(methods_predicting_target_positions(METHODS))}); {model.config.objective!r} "
                         "decodes over positions of its own (upsampled, or with blanks)")


class NATDrafter:
    """The NAT side of speculative decoding, with its state explicit: the encoder output (computed once), the
    planned target length of each sentence and its length logits (to plan again when the AR runs past it).

    `draft(prefix, prefix_lengths, budget)` returns, per row, the tokens predicted after the prefix up to the planned
    length, then end-of-sentence, at most `budget[row]` tokens; `num_iterations` > 1 refines the drafted positions
    Mask-Predict style (re-masking the least probable)."""

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_iterations: int = 1):
        self.device = model.device
        check_drafter_method(model)
        method = model.nat_method
        self.model, self.config, self.num_iterations = model, model.config, num_iterations
        input_ids, attention_mask = model._check_source(input_ids, attention_mask)
        hidden = model.model.encode(input_ids, attention_mask)
        self.context = model.model.make_context(input_ids, attention_mask, hidden, precompute_cross_attention=True)
        empty_source = (attention_mask & (input_ids != self.config.eos_token_id)).sum(-1) == 0
        length_logits = method.length_logits(model.model, hidden, attention_mask)  # [batch, classes]
        classes = torch.arange(length_logits.shape[-1], device=input_ids.device)
        if self.config.length_prediction_mode == "offset":
            class_lengths = attention_mask.sum(-1, keepdim=True) + classes - self.config.max_length_offset
        else:
            class_lengths = classes.expand_as(length_logits)
        self.class_lengths = class_lengths  # [batch, classes] the target length each class stands for
        self.length_logits = length_logits.masked_fill(class_lengths < 0, float("-inf"))
        self.empty_source = empty_source

    def planned_lengths(self, prefix_lengths: torch.Tensor) -> torch.Tensor:
        """`[batch]` the most probable target length (tokens before end-of-sentence) that is >= the prefix
        length: once the AR has run past the NAT's first guess, the NAT's next most probable length."""
        allowed = self.class_lengths >= prefix_lengths[:, None]
        best = self.length_logits.masked_fill(~allowed, float("-inf")).argmax(-1)
        lengths = self.class_lengths.gather(1, best[:, None]).squeeze(1)
        lengths = torch.where(allowed.any(-1), lengths, prefix_lengths + 1)  # past every class: one more token
        return lengths.masked_fill(self.empty_source & (prefix_lengths == 0), 0)

    @torch.no_grad()
    def draft(self, prefix: torch.Tensor, prefix_lengths: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        """Draft the continuation of each row's prefix.

        Args:
            prefix: `[batch, width]` the generated tokens (no decoder start token); row r's first
                `prefix_lengths[r]` are real.
            prefix_lengths: `[batch]` long.
            budget: `[batch]` long, the most tokens to draft for each row (0: none).

        Returns:
            `[batch, max(budget)]` drafted tokens, padded with -1 beyond each row's draft: the predicted tokens up to
            the planned length, then end-of-sentence (when the budget reaches it).
        """
        config, device = self.config, prefix.device
        prefix, prefix_lengths, budget = prefix.to(self.device), prefix_lengths.to(self.device), budget.to(self.device)
        limit = config.max_target_positions
        lengths = torch.minimum(self.planned_lengths(prefix_lengths), torch.full_like(prefix_lengths, limit))
        budget = torch.where(prefix_lengths >= limit, 0, budget)  # the NAT has no position for the next token
        # a row without budget gets an empty target (it must not exceed the NAT's positions)
        lengths = torch.where(budget > 0, torch.maximum(lengths, prefix_lengths), 0)
        width = int(budget.max()) if budget.numel() else 0
        drafts = torch.full((prefix.shape[0], width), -1, dtype=torch.long, device=prefix.device)
        if width == 0:
            return drafts.to(device)
        target_len = max(int(lengths.max()), 1)
        positions = torch.arange(target_len, device=prefix.device)[None, :]
        valid = positions < lengths[:, None]
        known = positions < prefix_lengths[:, None]
        tokens = torch.full(valid.shape, config.mask_token_id, dtype=torch.long, device=prefix.device)
        width_known = min(prefix.shape[1], target_len)
        tokens[:, :width_known] = torch.where(known[:, :width_known], prefix[:, :width_known], tokens[:, :width_known])
        tokens = tokens.masked_fill(~valid, config.pad_token_id)
        drafted = valid & ~known  # [batch, target_len] the positions the NAT predicts
        state = DecodingState(tokens=tokens, scores=torch.zeros(valid.shape, device=prefix.device), lengths=lengths)
        decoder_mask = self.model.prepare_decoder_mask(lengths, target_len, self.context)
        drafted_counts = drafted.sum(-1)
        most_drafted = int(drafted_counts.max())  # the output projection runs on the drafted positions only
        for step in range(self.num_iterations):
            remask = drafted if step == 0 else lowest_scoring_positions(
                state.scores, drafted, drafted_counts * (self.num_iterations - step) // self.num_iterations)
            last = step == self.num_iterations - 1  # whose scores nobody reads
            state = refine(self.model, state, remask, decoder_mask, self.context, max_masked=max(most_drafted, 1),
                           with_scores=not last)
        # row r's draft: positions prefix_len .. length-1, then end-of-sentence, cut to the budget
        offsets = torch.arange(width, device=prefix.device)[None, :]
        source = (prefix_lengths[:, None] + offsets).clamp(max=target_len - 1)
        draft_tokens = state.tokens.gather(1, source)
        draft_tokens = torch.where(prefix_lengths[:, None] + offsets == lengths[:, None], config.eos_token_id,
                                   draft_tokens)
        inside = (prefix_lengths[:, None] + offsets <= lengths[:, None]) & (offsets < budget[:, None])
        return torch.where(inside, draft_tokens, drafts).to(device)


def check_draft_options(draft_size: int | None, draft_iterations: int) -> None:
    if draft_size is not None and (isinstance(draft_size, bool) or not isinstance(draft_size, int) or draft_size < 1):
        raise ValueError(f"draft_size must be an int >= 1 or None, got {draft_size!r}")
    if isinstance(draft_iterations, bool) or not isinstance(draft_iterations, int) or draft_iterations < 1:
        raise ValueError(f"draft_iterations must be an int >= 1, got {draft_iterations!r}")


def check_drafter(model, drafter) -> None:
    """A NAT drafter must speak the AR model's vocabulary: same size, same end-of-sentence and padding ids."""
    ar_vocab = model.config.get_text_config().vocab_size
    pairs = {"vocab_size": (ar_vocab, drafter.config.vocab_size),
             "eos_token_id": (model.generation_config.eos_token_id, drafter.config.eos_token_id),
             "pad_token_id": (model.generation_config.pad_token_id, drafter.config.pad_token_id)}
    mismatched = {name: values for name, values in pairs.items() if values[0] != values[1]}
    if mismatched:
        raise ValueError(f"the drafter does not share the AR model's tokenizer (AR, drafter): {mismatched}")


def start_drafting(model, drafter, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_iterations: int):
    """The drafting state for one `generate` call: a `NATDrafter` for a NAT model, or what a callable drafter
    returns for the batch (`drafter(input_ids, attention_mask)`, an object with `NATDrafter.draft`'s signature;
    e.g. tests draft adversarially with it)."""
    if getattr(drafter, "nat_method", None) is not None:
        check_drafter(model, drafter)
        return NATDrafter(drafter, input_ids.to(drafter.device), attention_mask.to(drafter.device), num_iterations)
    if callable(drafter) and not isinstance(drafter, torch.nn.Module):
        return drafter(input_ids, attention_mask)
    raise ValueError(f"drafter must be a NAT model (NATForConditionalGeneration) or a callable returning a drafting "
                     f"state, got {type(drafter).__name__}")


def speculative_kwargs(model, drafter, draft_size: int | None = None, draft_iterations: int = 1,
                       stats: SpeculativeStats | None = None) -> dict:
    """The `generate` keyword arguments that make `model` (an encoder-decoder AR model) decode speculatively with
    the NAT `drafter`, checked now (ValueError naming the problem) rather than at the first sentence. For the CLI,
    `nat-hf bench` and pipelines: `model.generate(**batch, **speculative_kwargs(model, drafter))`."""
    if getattr(model, "nat_method", None) is not None:
        raise ValueError("speculative decoding verifies with an autoregressive model; the model given is a NAT model "
                         "(give the AR model, and the NAT model as the drafter)")
    if not getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"speculative decoding needs an encoder-decoder AR model, got {type(model).__name__}")
    if getattr(drafter, "nat_method", None) is None:
        raise ValueError(f"the drafter must be a NAT model, got {type(drafter).__name__}")
    check_drafter_method(drafter)
    check_drafter(model, drafter)
    check_draft_options(draft_size, draft_iterations)
    kwargs = {"custom_generate": speculative_generate, "drafter": drafter, "draft_size": draft_size,
              "draft_iterations": draft_iterations}
    if stats is not None:
        kwargs["speculative_stats"] = stats
    return kwargs


@torch.no_grad()
def speculative_generate(
    model,
    input_ids: torch.LongTensor,
    logits_processor,
    stopping_criteria,
    generation_config,
    synced_gpus: bool = False,
    streamer=None,
    inputs_tensor: torch.Tensor | None = None,
    drafter=None,
    draft_size: int | None = None,
    draft_iterations: int = 1,
    speculative_stats: SpeculativeStats | None = None,
    **model_kwargs,
):
    """Greedy search of the encoder-decoder AR `model`, drafted by the NAT `drafter`: pass it as
    `model.generate(..., custom_generate=speculative_generate, drafter=nat_model)`.

    Args (besides those `generate` prepares):
        drafter: a `NATForConditionalGeneration` whose method plans target positions (cmlm, vanilla, glat) and
            that shares the AR model's tokenizer (or a callable, see `start_drafting`).
        draft_size: the most tokens drafted per round (None: the whole remainder up to the NAT's planned length,
            end-of-sentence included).
        draft_iterations: NAT decoder passes per draft (1: one pass; more refine the drafted positions).
        speculative_stats: a `SpeculativeStats` to which per-sentence counts are appended.

    Streaming is not offered: transformers 5 does not hand `generate`'s `streamer` to a `custom_generate` callable.

    Returns:
        What greedy `generate` returns: `[batch, length]` ids (decoder start token first, rows that end early
        padded), or a `GenerateEncoderDecoderOutput` with `sequences` when `return_dict_in_generate=True`.
    """
    if drafter is None:
        raise ValueError("speculative_generate needs drafter=<a NAT model> (model.generate(..., drafter=...))")
    if not model.config.is_encoder_decoder:
        raise ValueError("speculative_generate drafts with a NAT translation model: the AR model must be an "
                         "encoder-decoder")
    if generation_config.do_sample or (generation_config.num_beams or 1) > 1:
        raise ValueError("speculative_generate reproduces greedy search: do_sample must be False and num_beams 1, "
                         f"got do_sample={generation_config.do_sample}, num_beams={generation_config.num_beams}")
    check_draft_options(draft_size, draft_iterations)
    if generation_config.return_dict_in_generate:
        requested = [name for name in UNSUPPORTED_OUTPUTS if getattr(generation_config, name, False)]
        if requested:
            raise ValueError(f"speculative_generate returns sequences only; {requested} are not supported")
    if synced_gpus:
        raise ValueError("speculative_generate does not support synced_gpus")
    cache = model_kwargs.get("cache")
    if cache is None or not hasattr(cache, "crop"):
        raise ValueError("speculative_generate needs the AR model's cache (use_cache=True) that can be cropped")

    batch, start_len = input_ids.shape
    device = input_ids.device
    pad = generation_config._pad_token_tensor
    pad_id = int(pad) if pad is not None else 0
    max_length = generation_config.max_length
    drafting = start_drafting(model, drafter, inputs_tensor, model_kwargs["attention_mask"], draft_iterations)
    # sequences: every row left-aligned (decoder start first), lengths[r] tokens known correct; the AR cache holds
    # the first `cached` positions of every row
    sequences = torch.full((batch, max_length), pad_id, dtype=torch.long, device=device)
    sequences[:, :start_len] = input_ids
    lengths = [start_len] * batch
    active = [True] * batch
    rounds, drafted, accepted = [0] * batch, [0] * batch, [0] * batch
    cached = 0
    forward_kwargs = {key: value for key, value in model_kwargs.items()
                      if key not in ("cache", "use_cache", "logits_to_keep")}
    while any(active):
        rows = torch.tensor(active, device=device)
        length_tensor = torch.tensor(lengths, device=device)
        budget = (max_length - length_tensor).clamp(min=0)
        if draft_size is not None:
            budget = budget.clamp(max=draft_size)
        budget = torch.where(rows, budget, 0)
        drafts = drafting.draft(sequences[:, start_len:], length_tensor - start_len, budget).to(device)
        draft_counts = (drafts >= 0).sum(-1).tolist()
        # the block: from the first uncached position to each row's last known token and its draft
        width = max(lengths[r] - cached + draft_counts[r] for r in range(batch) if active[r])
        candidates = torch.full((batch, cached + width), pad_id, dtype=torch.long, device=device)
        for r in range(batch):
            known = min(lengths[r], cached + width)
            candidates[r, :known] = sequences[r, :known]
            if active[r] and draft_counts[r]:
                candidates[r, lengths[r] : lengths[r] + draft_counts[r]] = drafts[r, : draft_counts[r]]
        outputs = model(decoder_input_ids=candidates[:, cached:], cache=cache, use_cache=True, **forward_kwargs)
        cache = outputs.cache if getattr(outputs, "cache", None) is not None else outputs.past_key_values
        logits = outputs.logits.float()  # [batch, width, vocab]; position j predicts candidates[:, cached + j + 1]
        choices = torch.empty((batch, width), dtype=torch.long, device=device)
        for j in range(width):  # the processors see each position's own prefix, as in greedy search
            scores = logits[:, j]
            if logits_processor:
                scores = logits_processor(candidates[:, : cached + j + 1], scores)
            choices[:, j] = scores.argmax(-1)
        choices = choices.tolist()
        candidate_rows = candidates.tolist()
        for r in range(batch):
            if not active[r]:
                continue
            rounds[r] += 1
            drafted[r] += draft_counts[r]
            first = lengths[r] - 1 - cached  # block position predicting the row's next token
            matches = 0
            while (matches < draft_counts[r]
                   and candidate_rows[r][lengths[r] + matches] == choices[r][first + matches]):
                matches += 1
            new_tokens = candidate_rows[r][lengths[r] : lengths[r] + matches] + [choices[r][first + matches]]
            kept = 0
            for token in new_tokens:
                sequences[r, lengths[r]] = token
                lengths[r] += 1
                kept += 1
                if bool(stopping_criteria(sequences[r : r + 1, : lengths[r]], None)[0]):
                    active[r] = False
                    break
            accepted[r] += min(matches, kept)
        if any(active):
            # positions whose input was a verified token of every unfinished row stay in the cache
            keep = min(lengths[r] - 1 for r in range(batch) if active[r])
            if cached + width > keep:
                cache.crop(keep - cached - width)
            cached = keep
    if speculative_stats is not None:
        for r in range(batch):
            speculative_stats.ar_forward_passes.append(rounds[r])
            speculative_stats.drafted_tokens.append(drafted[r])
            speculative_stats.accepted_tokens.append(accepted[r])
            speculative_stats.output_tokens.append(lengths[r] - start_len)
    sequences = sequences[:, : max(lengths)]
    if generation_config.return_dict_in_generate:
        return GenerateEncoderDecoderOutput(sequences=sequences, past_key_values=cache)
    return sequences


__all__ = ["NATDrafter", "SpeculativeStats", "speculative_generate", "speculative_kwargs"]
