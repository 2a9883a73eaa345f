import os
from pathlib import Path

import pytest
import torch
from transformers import MarianConfig, MarianMTModel

from nat_hf import NATConfig, NATForConditionalGeneration
from nat_hf.speculative import SpeculativeStats, speculative_generate
from nat_hf.toy import collate, make_toy_pairs, train_toy_model

from .conftest import TINY, objective_config_kwargs

VOCAB = TINY["vocab_size"]
SHARED_TEACHER = Path(os.environ.get("NAT_HF_TEACHER", Path(__file__).parents[1] / "../shared/models/"
                                     "ar-teacher-multi30k-en-de"))
SHARED_DATA = Path(os.environ.get("NAT_HF_DATA_DIR", Path(__file__).parents[1] / "../shared/data/multi30k"))


TOY_VOCAB = list(range(4, VOCAB))


@pytest.fixture(scope="module")
def toy_ar() -> MarianMTModel:
    """A small AR translator trained briefly on the toy reversal task, sharing the tiny NAT's vocabulary (pad 0 =
    decoder start, end-of-sentence 1): its greedy outputs end at varied lengths (and a few run to the cap)."""
    torch.manual_seed(0)
    config = MarianConfig(vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
                          decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                          pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, forced_eos_token_id=1, dropout=0.0)
    model = MarianMTModel(config)
    train_toy_model(model, make_toy_pairs("reverse", 2000, TOY_VOCAB, 3, 12, seed=0), steps=300, batch_size=32,
                    learning_rate=3e-3)
    return model.eval()


@pytest.fixture(scope="module")
def toy_drafter() -> NATForConditionalGeneration:
    """A tiny CMLM trained briefly on the same task: some drafts are accepted, most are not."""
    model = tiny_drafter("cmlm")
    train_toy_model(model, make_toy_pairs("reverse", 2000, TOY_VOCAB, 3, 12, seed=0), steps=200, batch_size=32,
                    learning_rate=3e-3)
    return model.eval()


def tiny_drafter(objective: str = "cmlm", seed: int = 0) -> NATForConditionalGeneration:
    torch.manual_seed(seed)
    return NATForConditionalGeneration(NATConfig(**objective_config_kwargs(objective))).eval()


def sources(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` right-padded toy sources (3..12 tokens + end-of-sentence) and their attention mask."""
    return collate([pair.source for pair in make_toy_pairs("reverse", count, TOY_VOCAB, 3, 12, seed=seed + 100)],
                   eos_token_id=1, pad_token_id=0)


class OracleDrafter:
    """Adversarial drafts for a batch whose greedy outputs are known: the true continuation (end-of-sentence
    included), with every `corrupt_every`-th drafted token changed, or nothing but random tokens."""

    def __init__(self, greedy: torch.Tensor, corrupt_every: int | None = None, random_tokens: bool = False):
        self.greedy, self.corrupt_every, self.random_tokens = greedy, corrupt_every, random_tokens
        self.generator = torch.Generator().manual_seed(0)

    def __call__(self, input_ids, attention_mask):
        assert input_ids.shape[0] == self.greedy.shape[0]
        return self

    def draft(self, prefix, prefix_lengths, budget):
        width = int(budget.max())
        drafts = torch.full((prefix.shape[0], width), -1, dtype=torch.long)
        for row, (done, allowed) in enumerate(zip(prefix_lengths.tolist(), budget.tolist(), strict=True)):
            if self.random_tokens:
                count = int(torch.randint(0, allowed + 1, (1,), generator=self.generator))
                drafts[row, :count] = torch.randint(0, VOCAB, (count,), generator=self.generator)
                continue
            target = self.greedy[row, 1:]  # without the decoder start token
            rest = target[done:][:allowed]
            for offset, token in enumerate(rest.tolist()):
                if self.corrupt_every and (done + offset) % self.corrupt_every == self.corrupt_every - 1:
                    token = (token + 1) % VOCAB
                drafts[row, offset] = token
        return drafts


def greedy_and_speculative(ar, input_ids, attention_mask, drafter, max_new_tokens=20, **kwargs):
    """The AR's greedy output and the speculative one, with its stats; `drafter` is a NAT model, or a function of
    the greedy output that returns a drafter (the adversarial ones). `kwargs` (draft options excepted) go to both
    `generate` calls."""
    shared = {key: value for key, value in kwargs.items() if key not in ("draft_size", "draft_iterations")}
    greedy = ar.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                         **shared)
    stats = SpeculativeStats()
    if not isinstance(drafter, torch.nn.Module):
        drafter = drafter(greedy)
    output = ar.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                         custom_generate=speculative_generate, drafter=drafter, speculative_stats=stats, **kwargs)
    return greedy, output, stats


def check_passes(stats: SpeculativeStats) -> None:
    for passes, output_tokens in zip(stats.ar_forward_passes, stats.output_tokens, strict=True):
        assert 1 <= passes <= output_tokens + 1


@pytest.mark.parametrize("drafter_name", ["trained cmlm", "random glat"])
@pytest.mark.parametrize("options", [{}, {"draft_size": 2}, {"draft_iterations": 2}])
def test_nat_drafted_output_equals_greedy_one_sentence_at_a_time_and_batched(toy_ar, toy_drafter, drafter_name,
                                                                               options):
    ar = toy_ar
    drafter = toy_drafter if drafter_name == "trained cmlm" else tiny_drafter("glat")
    input_ids, attention_mask = sources(8)
    for row in range(8):  # batch of one
        one = input_ids[row : row + 1, : int(attention_mask[row].sum())]
        greedy, output, stats = greedy_and_speculative(ar, one, torch.ones_like(one), drafter, **options)
        assert torch.equal(output, greedy)
        check_passes(stats)
    greedy, output, stats = greedy_and_speculative(ar, input_ids, attention_mask, drafter, **options)
    assert torch.equal(output, greedy)
    check_passes(stats)
    assert len(stats.ar_forward_passes) == 8
    if drafter_name == "trained cmlm":  # some drafted tokens kept: the partial-acceptance paths ran
        assert sum(stats.accepted_tokens) > 0


@pytest.mark.parametrize("corrupt_every", [None, 3, 1])
@pytest.mark.parametrize("draft_size", [None, 4])
def test_adversarial_drafts_keep_the_greedy_output_and_bound_the_passes(toy_ar, corrupt_every, draft_size):
    ar = toy_ar
    input_ids, attention_mask = sources(6, seed=1)
    greedy, output, stats = greedy_and_speculative(
        ar, input_ids, attention_mask, lambda greedy: OracleDrafter(greedy, corrupt_every), draft_size=draft_size)
    assert torch.equal(output, greedy)
    check_passes(stats)
    if corrupt_every is None and draft_size is None:  # the true continuation is accepted whole: one AR pass each
        assert stats.ar_forward_passes == [1] * 6
        assert stats.accepted_tokens == stats.output_tokens
    if corrupt_every == 3:  # two of three right: rounds keep several tokens
        assert sum(stats.ar_forward_passes) < sum(stats.output_tokens) and sum(stats.accepted_tokens) > 0
    if corrupt_every == 1:  # every draft wrong: greedy search, one token per pass
        assert stats.ar_forward_passes == stats.output_tokens
        assert sum(stats.accepted_tokens) == 0


def test_random_drafts_keep_the_greedy_output(toy_ar):
    ar = toy_ar
    input_ids, attention_mask = sources(6, seed=2)
    greedy, output, stats = greedy_and_speculative(
        ar, input_ids, attention_mask, lambda greedy: OracleDrafter(greedy, random_tokens=True), max_new_tokens=30)
    assert torch.equal(output, greedy)
    check_passes(stats)


def test_length_cap_and_return_dict_match_greedy(toy_ar):
    ar = toy_ar
    input_ids, attention_mask = sources(4, seed=3)
    for max_new_tokens in (1, 2, 7):
        greedy = ar.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                             return_dict_in_generate=True)
        output = ar.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                             return_dict_in_generate=True, custom_generate=speculative_generate,
                             drafter=OracleDrafter(greedy.sequences))
        assert torch.equal(output.sequences, greedy.sequences)


def test_bad_arguments_raise_naming_the_problem(toy_ar):
    ar, drafter = toy_ar, tiny_drafter()
    input_ids, attention_mask = sources(2)
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "custom_generate": speculative_generate}
    with pytest.raises(ValueError, match="needs drafter"):
        ar.generate(**kwargs)
    with pytest.raises(ValueError, match="num_beams"):
        ar.generate(**kwargs, drafter=drafter, num_beams=2)
    with pytest.raises(ValueError, match="do_sample"):
        ar.generate(**kwargs, drafter=drafter, do_sample=True)
    with pytest.raises(ValueError, match="draft_size"):
        ar.generate(**kwargs, drafter=drafter, draft_size=0)
    with pytest.raises(ValueError, match="draft_iterations"):
        ar.generate(**kwargs, drafter=drafter, draft_iterations=0)
    with pytest.raises(ValueError, match="output_scores"):
        ar.generate(**kwargs, drafter=drafter, return_dict_in_generate=True, output_scores=True)
    with pytest.raises(ValueError, match=r"methods cmlm, glat, vanilla\); 'dag' decodes over positions of its own"):
        ar.generate(**kwargs, drafter=tiny_drafter("dag"))
    other_vocabulary = NATForConditionalGeneration(NATConfig(**{**TINY, "vocab_size": VOCAB + 5}))
    with pytest.raises(ValueError, match="vocab_size"):
        ar.generate(**kwargs, drafter=other_vocabulary)
    with pytest.raises(ValueError, match="drafter must be a NAT model"):
        ar.generate(**kwargs, drafter=ar)


@pytest.mark.skipif(not (SHARED_TEACHER / "model.safetensors").exists() or not SHARED_DATA.exists(),
                    reason="the shared Multi30k teacher and data are not here")
def test_shared_teacher_output_is_unchanged_on_test_sentences():
    """The shared teacher on 24 test_2016_flickr sentences, drafted by a small NAT with the teacher's vocabulary
    (random weights: almost nothing accepted; 8 sentences one at a time, all 24 in batches of 12) and by
    near-perfect adversarial drafts (the true continuation, every 4th token wrong; batches of 20): the output equals
    the teacher's greedy output. (`benchmarks/multi30k.sh speculative` checks all 1000 with the trained drafter.)"""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from nat_hf.data import read_lines

    tokenizer = AutoTokenizer.from_pretrained(SHARED_TEACHER)
    teacher = AutoModelForSeq2SeqLM.from_pretrained(SHARED_TEACHER).eval()
    torch.manual_seed(0)
    small_nat = NATForConditionalGeneration(NATConfig(
        **{**TINY, "vocab_size": 8000, "pad_token_id": 0, "eos_token_id": 1, "unk_token_id": 2, "mask_token_id": 3,
           "max_source_positions": 128, "max_target_positions": 128, "max_length_offset": 32})).eval()
    lines = read_lines(SHARED_DATA / "test_2016_flickr.en")[:24]
    for row in range(8):
        one = tokenizer(lines[row : row + 1], return_tensors="pt")
        greedy, output, stats = greedy_and_speculative(teacher, one["input_ids"], one["attention_mask"], small_nat,
                                                       max_new_tokens=128)
        assert torch.equal(output, greedy), lines[row]
        check_passes(stats)
    for start in range(0, 24, 12):
        batch = tokenizer(lines[start : start + 12], return_tensors="pt", padding=True)
        for drafter in (small_nat, lambda greedy: OracleDrafter(greedy, corrupt_every=4)):
            greedy, output, stats = greedy_and_speculative(teacher, batch["input_ids"], batch["attention_mask"],
                                                           drafter, max_new_tokens=128)
            assert torch.equal(output, greedy)
            check_passes(stats)


def test_outputs_longer_than_the_drafters_positions_and_other_logits_processors(toy_ar, toy_drafter):
    """Past the drafter's `max_target_positions` (24) the AR continues alone (nothing drafted, no error); the
    processors `generate` builds from other options (here a minimum length, a repetition penalty) apply to each
    verified position as in greedy search."""
    input_ids, attention_mask = sources(4, seed=5)
    for options in ({"min_new_tokens": 30, "max_new_tokens": 40}, {"repetition_penalty": 1.5, "max_new_tokens": 30},
                    {"no_repeat_ngram_size": 2, "max_new_tokens": 30}):
        greedy, output, stats = greedy_and_speculative(toy_ar, input_ids, attention_mask, toy_drafter, **options)
        assert torch.equal(output, greedy), options
        check_passes(stats)
    assert min(stats.output_tokens) >= 1


def test_draft_agreement_script_counts_every_prefix(toy_ar, toy_drafter):
    """benchmarks/draft_agreement.py: one draft per prefix of each greedy output; a prefix whose first drafted
    token agrees has a run >= 1, so the mean run is at least the first-token agreement."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "draft_agreement.py"
    spec = importlib.util.spec_from_file_location("draft_agreement", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    class Tokenizer:  # the toy sources are ids already
        def __call__(self, texts, return_tensors):
            ids = torch.tensor([[int(token) for token in texts[0].split()]])
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    input_ids, attention_mask = sources(4, seed=6)
    texts = [" ".join(str(token) for token in row[mask.bool()].tolist())
             for row, mask in zip(input_ids, attention_mask, strict=True)]
    report = script.agreement(toy_ar, Tokenizer(), toy_drafter, texts, max_new_tokens=20)
    greedy = [toy_ar.generate(**Tokenizer()([text], "pt"), max_new_tokens=20)[0, 1:] for text in texts]
    assert report["prefixes"] == sum(len(output) for output in greedy) and report["sentences"] == 4
    assert report["mean_agreeing_run"] >= report["first_token_agreement"] > 0
