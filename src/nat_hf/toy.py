"""Generated toy translation tasks and a minimal training loop, for the quick demo and the learning tests.

Real training (Multi30k, Accelerate, checkpoints) lives in `training/`; this module only needs torch and
transformers, and trains a tiny model in well under a minute on a laptop CPU.
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import get_scheduler

TOY_TASKS = ("reverse", "sort", "reverse_or_sort", "sort_up_or_down")
TOY_CONTENT = list(range(5, 17))  # 12 content symbols after the special ids pad, eos, unk, mask (3), blank (4)
# the learning tests' model: about 200k parameters, trained in seconds (`learn_toy_task`)
TOY_MODEL = dict(vocab_size=5 + len(TOY_CONTENT), d_model=64, encoder_layers=2, decoder_layers=2,
                 encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256,
                 max_source_positions=16, max_target_positions=16, max_length_offset=8, dropout=0.0,
                 normalize_before=True, blank_token_id=4)


@dataclass
class ToyPair:
    source: list[int]  # content token ids, no end-of-sentence
    targets: list[list[int]]  # every correct output; training uses one, picked at random per example


def make_toy_pairs(
    task: str, count: int, vocab: Sequence[int], min_len: int, max_len: int, seed: int
) -> list[ToyPair]:
    """Random token sequences and their transformation.

    `"reverse"` and `"sort"` have one correct output. `"reverse_or_sort"` and `"sort_up_or_down"` (ascending or
    descending order) are two-mode variants: both outputs are correct and a training example shows one of them at
    random, so a model that predicts every position independently tends to mix the two.
    """
    if task not in TOY_TASKS:
        raise ValueError(f"task must be one of {TOY_TASKS}, got {task!r}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        source = [rng.choice(vocab) for _ in range(rng.randint(min_len, max_len))]
        reversed_, ascending = source[::-1], sorted(source)
        targets = {
            "reverse": [reversed_],
            "sort": [ascending],
            "reverse_or_sort": [reversed_, ascending],
            "sort_up_or_down": [ascending, ascending[::-1]],
        }[task]
        pairs.append(ToyPair(source, targets))
    return pairs


def collate(
    sequences: Sequence[Sequence[int]], eos_token_id: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Close each sequence with end-of-sentence and right-pad: ids `[batch, longest + 1]` and attention mask."""
    width = max(len(sequence) for sequence in sequences) + 1
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence) + 1] = torch.tensor([*sequence, eos_token_id])
    return ids, (ids != pad_token_id).long()


def train_toy_model(
    model,
    pairs: Sequence[ToyPair],
    steps: int,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    warmup_steps: int = 100,
    seed: int = 0,
) -> list[float]:
    """Train `model` with AdamW and linear warmup/decay on random batches of `pairs`; return the loss per step.
    The model's forward sees the training step (`step=`, counted from 0) so that a method's schedules (e.g. GLAT's
    glancing ratio) advance."""
    config = model.config
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.98), weight_decay=0.01)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=warmup_steps, num_training_steps=steps)
    model.train()
    losses = []
    for step in range(steps):
        batch = rng.sample(list(pairs), batch_size) if len(pairs) >= batch_size else rng.choices(pairs, k=batch_size)
        input_ids, attention_mask = collate([pair.source for pair in batch], config.eos_token_id, config.pad_token_id)
        labels, _ = collate([rng.choice(pair.targets) for pair in batch], config.eos_token_id, config.pad_token_id)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, step=step).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def learn_toy_task(task: str, steps: int, seed: int = 0, learning_rate: float = 3e-3, **config: object
                   ) -> tuple:
    """The learning tests' recipe in one place: a `TOY_MODEL` NAT model (`config` overrides its fields, e.g.
    `objective="dag"`, `method_options={...}`) trained from scratch with `train_toy_model` (warmup 50) on 20000
    pairs of `task` (2-8 symbols of `TOY_CONTENT`). Returns the model, 500 held-out test pairs and the losses."""
    from .configuration_nat import NATConfig
    from .modeling_nat import NATForConditionalGeneration

    torch.manual_seed(seed)
    model = NATForConditionalGeneration(NATConfig(**{**TOY_MODEL, **config}))
    train = make_toy_pairs(task, 20000, TOY_CONTENT, min_len=2, max_len=8, seed=seed + 1)
    losses = train_toy_model(model, train, steps=steps, learning_rate=learning_rate, warmup_steps=50, seed=seed)
    return model, make_toy_pairs(task, 500, TOY_CONTENT, min_len=2, max_len=8, seed=seed + 2), losses


@dataclass
class ToyScore:
    exact_match: float  # share of outputs equal to one of the correct targets
    length_accuracy: float  # share of outputs with the right length


def evaluate_toy_model(model, pairs: Sequence[ToyPair], batch_size: int = 256, **generate_kwargs) -> ToyScore:
    """Decode every source with `model.generate(**generate_kwargs)` and score it against the pair's targets."""
    config = model.config
    exact = right_length = 0
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        input_ids, attention_mask = collate([pair.source for pair in batch], config.eos_token_id, config.pad_token_id)
        output = model.generate(input_ids, attention_mask=attention_mask, return_dict_in_generate=True,
                                **generate_kwargs)
        for pair, row, length in zip(batch, output.sequences.tolist(), output.lengths.tolist(), strict=True):
            hypothesis = row[:length]
            exact += hypothesis in pair.targets
            right_length += length == len(pair.targets[0])
    return ToyScore(exact_match=exact / len(pairs), length_accuracy=right_length / len(pairs))
