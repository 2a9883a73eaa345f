"""Adversarial (GAN) training of a NAT generator: `nat-hf train` with `adversarial: {enabled: true, ...}`.

The NAT model is the generator of whole sentences; a discriminator (`NATDiscriminator`) tells its one-pass outputs
from real targets (the batch's targets: references, or the teacher's outputs when training on distilled data), and
the generator learns to fool it (Goodfellow et al., 2014), on top of its own NAT loss:

    generator:      loss = nat_loss + weight * softplus(-D(x, G(x)))               (non-saturating GAN loss)
    discriminator:  loss = BCE(D(x, y), 1 - label_smoothing) + BCE(D(x, G(x)), 0)

`G(x)` is a sample of the generator's one-pass output distribution at the reference length (one decoder pass with
nothing observed, `LengthHeadMethod.one_pass_logits`), passed to the discriminator by the straight-through
Gumbel-softmax estimator (Jang et al., 2017, "Categorical Reparameterization with Gumbel-Softmax"): the forward
pass sends the sampled one-hot tokens, the backward pass the gradient of the tempered softmax relaxation. Chosen over
REINFORCE because the generator's output is a factorised distribution per position whose relaxation is cheap: one
backward pass through the discriminator gives a gradient per position and token, with no baseline to fit and none
of REINFORCE's variance over 20-token sentences. The temperature only shapes that gradient (the sampled tokens do
not depend on it); it decays linearly from `temperature_start` to `temperature_end`.

Stabiliser: one-sided label smoothing of the real targets (Salimans et al., 2016), chosen over a gradient penalty
because the discriminator's inputs are discrete (a penalty on interpolated one-hot rows has no clear meaning) and it
costs nothing. The discriminator trains `discriminator_steps` times per generator step on the same batch, each time
on a fresh sample from the generator's (detached) distribution; during the first `discriminator_warmup_steps`
steps it trains alone: the generator gets its NAT loss only.

Methods: those whose decoder positions are target positions (`NATMethod.predicts_target_positions`: cmlm,
vanilla, glat). CTC and DAG decoders output over upsampled positions (and blank-emitting ones over positions with
blanks), which a discriminator reading target sentences cannot take without an alignment: refused with an error
naming the method.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .method_base import methods_predicting_target_positions, special_token_ids
from .methods import METHODS
from .modeling_discriminator import NATDiscriminator, NATDiscriminatorConfig

DISCRIMINATOR_DIR = "best_discriminator"  # beside best/: the discriminator saved with the best generator


@dataclass
class AdversarialArgs:
    """The `adversarial:` section of a training config (each key checked by `validate`)."""

    enabled: bool = False  # the rest is read only when True
    weight: float = 0.1  # of the adversarial term against the NAT loss (0: the discriminator trains, G ignores it)
    discriminator_steps: int = 1  # discriminator updates per generator update
    discriminator_warmup_steps: int = 0  # first steps: the discriminator trains, the generator gets no GAN term
    temperature_start: float = 1.0  # Gumbel-softmax temperature, linearly ...
    temperature_end: float = 1.0  # ... to this ...
    temperature_anneal_steps: int = 0  # ... over these steps (0: temperature_start throughout)
    label_smoothing: float = 0.1  # one-sided: real targets are labelled 1 - label_smoothing
    learning_rate: float = 1e-4  # the discriminator's AdamW (constant rate)
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    weight_decay: float = 0.01
    # NATDiscriminatorConfig fields (d_model, layers, attention_heads, ffn_dim, dropout); vocabulary and lengths
    # come from the generator
    discriminator: dict = field(default_factory=dict)

    def validate(self) -> None:
        """ValueError naming the key of the first bad value."""
        checks = [
            (self.weight >= 0, f"weight must be >= 0, got {self.weight}"),
            (self.discriminator_steps >= 1, f"discriminator_steps must be >= 1, got {self.discriminator_steps}"),
            (self.discriminator_warmup_steps >= 0,
             f"discriminator_warmup_steps must be >= 0, got {self.discriminator_warmup_steps}"),
            (self.temperature_start > 0, f"temperature_start must be > 0, got {self.temperature_start}"),
            (self.temperature_end > 0, f"temperature_end must be > 0, got {self.temperature_end}"),
            (self.temperature_anneal_steps >= 0,
             f"temperature_anneal_steps must be >= 0, got {self.temperature_anneal_steps}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (len(self.betas) == 2 and all(0 <= beta < 1 for beta in self.betas),
             f"betas must be two numbers in [0, 1), got {self.betas}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        fixed = sorted(set(self.discriminator) & {"vocab_size", "max_source_positions", "max_target_positions",
                                                  "pad_token_id"})
        if fixed:
            raise ValueError(f"discriminator.{fixed[0]} comes from the generator; leave it out")
        discriminator_config(self, vocab_size=8, max_source_positions=8, max_target_positions=8)

    def temperature(self, step: int) -> float:
        """The Gumbel-softmax temperature at training step `step`."""
        if self.temperature_anneal_steps == 0:
            return self.temperature_start
        progress = min(step / self.temperature_anneal_steps, 1.0)
        return self.temperature_start + progress * (self.temperature_end - self.temperature_start)


def discriminator_config(args: AdversarialArgs, vocab_size: int, max_source_positions: int,
                         max_target_positions: int, pad_token_id: int = 0) -> NATDiscriminatorConfig:
    """The discriminator's config: `args.discriminator` over the defaults, the generator's vocabulary and lengths.
    An unknown key or bad value is a ValueError naming `discriminator.KEY`."""
    known = set(NATDiscriminatorConfig.__dataclass_fields__) - {"vocab_size", "max_source_positions",
                                                               "max_target_positions", "pad_token_id"}
    unknown = sorted(set(args.discriminator) - known)
    if unknown:
        raise ValueError(f"discriminator.{unknown[0]} is not a discriminator setting (known: d_model, layers, "
                         "attention_heads, ffn_dim, dropout, init_std)")
    try:
        return NATDiscriminatorConfig(**args.discriminator, vocab_size=vocab_size, pad_token_id=pad_token_id,
                                      max_source_positions=max_source_positions,
                                      max_target_positions=max_target_positions)
    except (TypeError, ValueError) as error:  # huggingface_hub's StrictDataclassError is a TypeError/ValueError
        raise ValueError(f"discriminator: {error}") from None


def check_generator(model) -> None:
    """ValueError unless `model` is a NAT model whose decoder outputs a distribution per target position."""
    method = getattr(model, "nat_method", None)
    if not getattr(method, "predicts_target_positions", False):
        objective = getattr(model.config, "objective", type(model).__name__)
        raise ValueError(f"adversarial training needs a decoder that predicts target positions (methods "
                         f"{', '.join(methods_predicting_target_positions(METHODS))}); {objective!r} outputs over "
                         "positions of its own (upsampled, or with blanks)")


def build_discriminator(args: AdversarialArgs, generator) -> NATDiscriminator:
    """A fresh discriminator sized for `generator`'s vocabulary and lengths."""
    config = generator.config
    return NATDiscriminator(discriminator_config(args, config.vocab_size, config.max_source_positions,
                                                 config.max_target_positions, config.pad_token_id))


# ---------------------------------------------------------------------------------------------- losses
def gumbel_straight_through(logits: torch.Tensor, temperature: float, excluded_ids: list[int] = ()
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """A sample of each position's categorical distribution, with the straight-through Gumbel-softmax gradient.

    Args:
        logits: `[batch, length, vocab]` unnormalised scores.
        temperature: > 0, of the softmax relaxation whose gradient the sample carries.
        excluded_ids: token ids never sampled (special tokens).

    Returns:
        `one_hot` `[batch, length, vocab]` (forward: exactly one-hot; backward: the gradient of
        `softmax((logits + gumbel) / temperature)`) and the sampled `tokens` `[batch, length]`.
    """
    logits = logits.float()
    if excluded_ids:
        logits = logits.index_fill(-1, torch.tensor(list(excluded_ids), device=logits.device), float("-inf"))
    gumbel = -torch.empty_like(logits).exponential_().log()  # Gumbel(0, 1) noise
    soft = ((logits + gumbel) / temperature).softmax(-1)
    tokens = soft.argmax(-1)  # = argmax(logits + gumbel): a sample of softmax(logits), whatever the temperature
    hard = torch.zeros_like(soft).scatter_(-1, tokens.unsqueeze(-1), 1.0)
    return hard - soft.detach() + soft, tokens


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, label_smoothing: float = 0.0
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary cross-entropy of the discriminator, and its accuracy.

    Args:
        real_logits: `[batch]` scores of real targets (labelled `1 - label_smoothing`).
        fake_logits: `[batch]` scores of generated targets (labelled 0).

    Returns:
        The loss `[]` (mean of the two halves) and the accuracy `[]` (share of real scored > 0 and generated
        scored < 0, the two halves weighted equally).
    """
    real = F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, 1.0 - label_smoothing))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    accuracy = ((real_logits > 0).float().mean() + (fake_logits < 0).float().mean()) / 2
    return (real + fake) / 2, accuracy.detach()


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss `-log sigmoid(D(x, G(x)))` averaged over the batch (`fake_logits`
    `[batch]`): large when the discriminator sees through the generated targets."""
    return F.softplus(-fake_logits).mean()


# ------------------------------------------------------------------------------------------ the updates
@dataclass
class GeneratorSample:
    """The generator's one-pass output on a batch: what both updates need."""

    input_ids: torch.Tensor  # [batch, source_len]
    attention_mask: torch.Tensor  # [batch, source_len] bool
    target: torch.Tensor  # [batch, target_len] the real targets (pad beyond each length)
    target_mask: torch.Tensor  # [batch, target_len] bool
    logits: torch.Tensor  # [batch, target_len, vocab] one-pass logits (with the generator's graph)
    # [batch, target_len] the tokens `generator_term` sampled, which the discriminator's first update reuses (a
    # sample of the same distribution: one sampling pass over the vocabulary less); None: sample afresh
    tokens: torch.Tensor | None = None


def generator_sample(generator, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
                     ) -> GeneratorSample:
    """One encoder and one decoder pass of `generator` (a `NATForConditionalGeneration`, unwrapped) at the
    lengths of `labels`, nothing observed."""
    input_ids, attention_mask = generator._check_source(input_ids, attention_mask, trim=False)
    target, target_mask = generator._prepare_targets(labels)
    hidden = generator.model.encode(input_ids, attention_mask)
    context = generator.model.make_context(input_ids, attention_mask, hidden)
    logits = generator.nat_method.one_pass_logits(generator, context, target_mask)
    return GeneratorSample(input_ids, attention_mask, target, target_mask, logits)


def generator_term(sample: GeneratorSample, discriminator: NATDiscriminator, temperature: float,
                   excluded_ids: list[int]) -> torch.Tensor:
    """The generator's adversarial loss `[]` on a straight-through sample of `sample.logits`, scored by
    `discriminator` (unwrapped) with its parameters frozen: the gradient reaches the generator only."""
    one_hot, sample.tokens = gumbel_straight_through(sample.logits, temperature, excluded_ids)
    frozen = [parameter for parameter in discriminator.parameters() if parameter.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        fake_logits = discriminator(sample.input_ids, sample.attention_mask, target_probs=one_hot,
                                    target_mask=sample.target_mask).logits
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)
    return generator_adversarial_loss(fake_logits)


def discriminator_term(sample: GeneratorSample, discriminator, label_smoothing: float, excluded_ids: list[int]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The discriminator's loss `[]` and accuracy `[]` on the batch's real targets and a sample of the generator's
    (detached) distribution (the tokens `generator_term` drew, once; then fresh ones), scored in ONE forward pass
    (`discriminator` may be wrapped for data parallelism, which expects one forward per backward)."""
    fake, sample.tokens = sample.tokens, None
    if fake is None:
        with torch.no_grad():
            _, fake = gumbel_straight_through(sample.logits.detach(), 1.0, excluded_ids)
    fake = fake.masked_fill(~sample.target_mask, 0)
    batch = sample.target.shape[0]
    logits = discriminator(sample.input_ids.repeat(2, 1), sample.attention_mask.repeat(2, 1),
                           target_ids=torch.cat([sample.target, fake]),
                           target_mask=sample.target_mask.repeat(2, 1)).logits
    return discriminator_loss(logits[:batch], logits[batch:], label_smoothing)


def excluded_token_ids(generator) -> list[int]:
    """Token ids the generator's samples never hold (what its decoding never outputs)."""
    return special_token_ids(generator.config)


__all__ = [
    "AdversarialArgs",
    "GeneratorSample",
    "build_discriminator",
    "check_generator",
    "discriminator_loss",
    "discriminator_term",
    "generator_adversarial_loss",
    "generator_sample",
    "generator_term",
    "gumbel_straight_through",
]
