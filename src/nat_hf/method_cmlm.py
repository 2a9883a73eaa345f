"""The `cmlm` method: conditional masked LM training and Mask-Predict decoding (Ghazvininejad et al., 2019,
"Mask-Predict: Parallel Decoding of Conditional Masked Language Models").

Training replaces a random number of target tokens by `<mask>` and trains on those positions; the length predictor
(`model.length_predictor`) is trained beside it. Decoding keeps the `length_beam` most probable lengths, runs
`num_iterations` Mask-Predict passes on each, and returns the candidate with the best mean log-probability.
`MaskPredictOptions` and `CMLMMethod`'s decoding are shared with `vanilla` (method_vanilla.py).
"""

from dataclasses import dataclass, field

import torch

from .method_base import (
    DecodingState,
    Hypotheses,
    LengthHeadMethod,
    best_candidates,
    check_finite,
    check_integer,
    check_length_beam,
    lowest_scoring_positions,
    masked_token_loss,
    predict_tokens,
    special_token_ids,
)


@dataclass
class MaskPredictOptions:
    """Decoding options of Mask-Predict (a model's `generation_config` holds its defaults)."""

    num_iterations: int = field(default=10, metadata={"help": "Mask-Predict passes (NAT; default: the model's)"})
    length_beam: int = field(default=5, metadata={"help": "length candidates per sentence (NAT; default: the "
                                                          "model's)"})
    decoding_strategy: str = field(default="mask_predict", metadata={"help": "refinement loop (NAT: mask_predict)"})

    def validate(self, config) -> None:
        """ValueError naming the option when it is malformed or does not suit a model of `config`."""
        self.num_iterations = check_integer("num_iterations", self.num_iterations, 1)
        self.length_beam = check_length_beam(self.length_beam, config)
        if not isinstance(self.decoding_strategy, str) or self.decoding_strategy not in DECODING_STRATEGIES:
            raise ValueError(f"decoding_strategy must be one of {sorted(DECODING_STRATEGIES)}, "
                             f"got {self.decoding_strategy!r}")
        if self.num_iterations > 1 and config.decoder_input_mode != "mask":
            raise ValueError("num_iterations > 1 needs decoder_input_mode='mask': a 'copy' decoder cannot "
                             "condition on its own previous output")


@dataclass
class CMLMTrainingOptions:
    """CMLM's masking (in `NATConfig.method_options`)."""

    # share of training targets masked the way a speculative drafter is asked (nat_hf.speculative): a prefix of
    # random length 0 .. L-1 observed, every position after it masked; the others keep Mask-Predict's masking
    suffix_mask_rate: float = 0.0

    def validate(self, config=None) -> None:
        rate = self.suffix_mask_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"NATConfig: method_options suffix_mask_rate must be a number in [0, 1], got {rate!r}")
        self.suffix_mask_rate = float(rate)


def sample_cmlm_mask(target_mask: torch.Tensor, suffix_mask_rate: float = 0.0) -> torch.Tensor:
    """Choose the target positions to mask for CMLM training.

    Per sentence of length L >= 1, the number of masked tokens is uniform in {1, ..., L} and the masked positions
    are a uniformly random subset of that size (Ghazvininejad et al., 2019). With `suffix_mask_rate` > 0, that
    share of the sentences (at random) instead masks every position from a uniform prefix length in {0, ..., L-1}
    on: the input of a drafter continuing a known prefix. Uses torch's global RNG (the same draws as without
    suffix masking, then its own).

    Args:
        target_mask: `[batch, target_len]` bool, `True` on real target tokens.
        suffix_mask_rate: share of suffix-masked sentences, in [0, 1].

    Returns:
        `[batch, target_len]` bool, `True` where the decoder input is replaced by `<mask>`.
    """
    lengths = target_mask.sum(-1)  # [batch]
    uniform = torch.rand(lengths.shape, device=target_mask.device)
    num_masked = torch.minimum((lengths * uniform).long() + 1, lengths)  # [batch], in {1..L}, 0 when L = 0
    random_scores = torch.rand(target_mask.shape, device=target_mask.device)
    masked = lowest_scoring_positions(random_scores, target_mask, num_masked)
    if suffix_mask_rate > 0:
        prefix = (lengths * torch.rand(lengths.shape, device=target_mask.device)).long()  # [batch], in {0..L-1}
        positions = torch.arange(target_mask.shape[1], device=target_mask.device)
        suffix = target_mask & (positions[None, :] >= prefix[:, None])
        chosen = torch.rand(lengths.shape, device=target_mask.device) < suffix_mask_rate  # [batch]
        masked = torch.where(chosen[:, None], suffix, masked)
    return masked


def refine(
    model,
    state: DecodingState,
    remask: torch.Tensor,
    self_attention_mask: torch.Tensor | None,
    context,
    max_masked: int | None = None,
    with_scores: bool = True,
) -> DecodingState:
    """One refinement step: replace the tokens at `remask` (`[rows, target_len]` bool) by `<mask>`, run the
    decoder once, and take its most probable token (special tokens excluded) and log-probability at those
    positions; the other positions keep their tokens and scores.

    `max_masked`, an upper bound on the masked positions of any row known without a host sync, limits the
    output projection (the largest single layer) to that many positions per row. `with_scores=False` skips
    the normalisation over the vocabulary (the new tokens get score 0, NaN where the logit is not finite), for
    a last pass whose scores nobody reads: one-pass decoding with a single length candidate.

    Memory: the projection runs over chunks of positions (`method_base.predict_tokens`), so the float32 logits
    take at most `method_base.LOGITS_BUDGET_BYTES` (16 MiB; twice that with logsumexp's temporary) whatever the
    batch, length beam, length and vocabulary; tokens and scores do not depend on the chunking."""
    config = model.config
    decoder_input_ids = state.tokens.masked_fill(remask, config.mask_token_id)
    hidden = model.model.decode(decoder_input_ids, state.valid, context, self_attention_mask)
    positions = None
    if max_masked is not None and max_masked < remask.shape[1]:
        # the masked positions of each row first (then filler positions whose result is discarded)
        positions = remask.to(torch.int8).sort(dim=-1, descending=True, stable=True).indices[:, :max_masked]
        hidden = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))  # [rows, k, d_model]
    # [rows, positions] each; scores: log-probability of the chosen token under the full distribution
    tokens, scores = predict_tokens(hidden, model.lm_head, special_token_ids(config), with_scores)
    if positions is not None:
        tokens = state.tokens.scatter(1, positions, tokens)
        scores = state.scores.scatter(1, positions, scores)
    return DecodingState(
        tokens=torch.where(remask, tokens, state.tokens),
        scores=torch.where(remask, scores, state.scores),
        lengths=state.lengths,
        step=state.step + 1,
    )


def mask_predict(model, context, lengths: torch.Tensor, num_iterations: int, final_scores: bool = True
                 ) -> DecodingState:
    """Mask-Predict (Ghazvininejad et al., 2019).

    Pass 0 predicts every position from `<mask>` inputs. Pass t = 1 .. T-1 (T = `num_iterations`) re-masks the
    `floor(L * (T - t) / T)` lowest-probability tokens of each hypothesis of length L and predicts them again,
    keeping the other tokens and their probabilities. `num_iterations=1` is one-pass parallel decoding.
    The loop makes no host synchronisation.

    Args:
        model: a `NATForConditionalGeneration`.
        context: its `NATEncoderContext`, one row per hypothesis.
        lengths: `[rows]` long, the target length of each hypothesis.
        num_iterations: decoder passes, >= 1.
        final_scores: whether the last pass must score its tokens (False: their scores are 0; the caller reads
            neither `state.scores` nor a ranking of the hypotheses).
    """
    config = model.config
    target_len = max(int(lengths.max()), 1)  # the one host sync: the shape of the hypotheses
    positions = torch.arange(target_len, device=lengths.device)
    valid = positions[None, :] < lengths[:, None]  # [rows, target_len]
    tokens = torch.full(valid.shape, config.mask_token_id, device=lengths.device).masked_fill(
        ~valid, config.pad_token_id
    )
    state = DecodingState(tokens=tokens, scores=torch.zeros(valid.shape, device=lengths.device), lengths=lengths)
    decoder_mask = model.prepare_decoder_mask(lengths, target_len, context)
    for step in range(num_iterations):
        if step == 0:
            remask, max_masked = valid, None
        else:
            num_masked = lengths * (num_iterations - step) // num_iterations  # [rows], linear decay
            remask = lowest_scoring_positions(state.scores, valid, num_masked)
            max_masked = target_len * (num_iterations - step) // num_iterations  # bound on num_masked, host side
        last = step == num_iterations - 1
        state = refine(model, state, remask, decoder_mask, context, max_masked, with_scores=final_scores or not last)
    return state


DECODING_STRATEGIES = {
    "mask_predict": mask_predict,
}


class CMLMMethod(LengthHeadMethod):
    """Conditional masked LM: a random number of target tokens is replaced by `<mask>`; the decoder sees the rest
    and is trained with label-smoothed cross-entropy on the masked positions only. Decodes with Mask-Predict."""

    name = "cmlm"
    summary = ("a conditional masked language model with a length predictor, decoded with Mask-Predict: every "
               "target token is predicted in parallel, then the least confident ones are predicted again over a few "
               "passes")
    paper = 'Ghazvininejad et al., 2019, "Mask-Predict: Parallel Decoding of Conditional Masked Language Models"'
    Options = MaskPredictOptions
    TrainingOptions = CMLMTrainingOptions

    def validate_config(self, config) -> None:
        if config.decoder_input_mode != "mask":
            raise ValueError("NATConfig: `decoder_input_mode` must be 'mask' with objective 'cmlm' (it conditions "
                             "on observed target tokens)")

    def is_single_pass(self, options: dict) -> bool:
        return options["num_iterations"] == 1 and options["length_beam"] == 1

    def token_loss(self, model, context, target, target_mask, step=None) -> tuple[torch.Tensor, torch.Tensor]:
        masked = sample_cmlm_mask(target_mask, self.training_options(model.config).suffix_mask_rate)
        decoder_input_ids = target.masked_fill(masked, model.config.mask_token_id)
        logits = model.decoder_logits(decoder_input_ids, target_mask, context)
        return logits, masked_token_loss(logits, target, masked, model.config.label_smoothing)

    def decode(self, model, input_ids, attention_mask, options, forced_lengths=None) -> Hypotheses:
        """Length candidates -> Mask-Predict on each -> the best mean log-probability. The encoder runs once per
        batch; the candidates share its output and precomputed cross-attention keys."""
        length_beam = options["length_beam"]
        lengths, length_logits, context = self.plan_candidates(model, input_ids, attention_mask, length_beam,
                                                               options["max_length"], forced_lengths)
        strategy = DECODING_STRATEGIES[options["decoding_strategy"]]
        # the last pass's scores pick among length candidates and are returned with return_dict_in_generate
        final_scores = length_beam > 1 or options["return_dict_in_generate"]
        state = strategy(model, context, lengths, options["num_iterations"], final_scores)
        if length_logits is not None:  # the one check on values: raises rather than return garbage
            check_finite({"length logits": length_logits, "token scores": state.scores})
        tokens, best_lengths, scores = best_candidates(state, length_beam)
        return Hypotheses(tokens=tokens, lengths=best_lengths, scores=scores)
