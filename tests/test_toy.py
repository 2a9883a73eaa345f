"""The toy training loop passes the training step to the model, so that a method's schedules advance."""

import torch
from torch import nn

from nat_hf import NATConfig, NATForConditionalGeneration
from nat_hf.toy import make_toy_pairs, train_toy_model
from tests.conftest import TINY


class StepRecorder(nn.Module):
    """A NAT model that records the `step` each forward call gets."""

    def __init__(self, model: NATForConditionalGeneration):
        super().__init__()
        self.model, self.config, self.steps = model, model.config, []

    def forward(self, **kwargs):
        self.steps.append(kwargs.get("step"))
        return self.model(**kwargs)


def test_train_toy_model_passes_the_step_to_the_forward_pass():
    torch.manual_seed(0)
    recorder = StepRecorder(NATForConditionalGeneration(NATConfig(**TINY, objective="glat")))
    pairs = make_toy_pairs("sort", 20, list(range(5, 17)), min_len=2, max_len=5, seed=0)
    losses = train_toy_model(recorder, pairs, steps=5, batch_size=4, warmup_steps=1)
    assert recorder.steps == [0, 1, 2, 3, 4]
    assert len(losses) == 5
