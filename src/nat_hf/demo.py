"""Quick demo: train a tiny Mask-Predict model on a generated toy translation task, save it, reload it with the
transformers Auto classes and translate with it. About a minute on two CPU cores; no download.

The toy task: English number words in any order -> the German words in ascending numeric order
("nine two five" -> "zwei fünf neun"), a translation with reordering.

    python -m nat_hf.demo --output-dir demo-model
"""

import argparse
import random
import time
from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from . import NATConfig, NATForConditionalGeneration
from .inference import thread_count
from .tokenization import config_kwargs_from_tokenizer, train_tokenizer
from .toy import ToyPair, train_toy_model

ENGLISH = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
GERMAN = ["eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn", "elf", "zwölf"]


def make_sentences(count: int, seed: int, min_words: int = 2, max_words: int = 8) -> list[tuple[str, str]]:
    """`count` (English, German) sentence pairs of the toy task."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        numbers = [rng.randrange(len(ENGLISH)) for _ in range(rng.randint(min_words, max_words))]
        pairs.append((" ".join(ENGLISH[n] for n in numbers), " ".join(GERMAN[n] for n in sorted(numbers))))
    return pairs


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("demo-model"))
    parser.add_argument("--steps", type=int, default=800, help="training steps (batch of 64 sentences)")
    parser.add_argument("--threads", type=thread_count, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    train_pairs = make_sentences(20000, seed=args.seed + 1)
    test_pairs = make_sentences(200, seed=args.seed + 2)
    tokenizer = train_tokenizer(texts=[text for pair in train_pairs for text in pair], vocab_size=100, algorithm="bpe",
                                model_max_length=32)
    config = NATConfig(
        **config_kwargs_from_tokenizer(tokenizer), d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256,
        max_source_positions=32, max_target_positions=32, max_length_offset=8, dropout=0.0, normalize_before=True,
    )
    torch.manual_seed(args.seed)
    model = NATForConditionalGeneration(config)

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    toy_pairs = [ToyPair(ids(source), [ids(target)]) for source, target in train_pairs]
    print(f"training a {model.num_parameters() / 1e3:.0f}k-parameter CMLM model for {args.steps} steps ...")
    start = time.perf_counter()
    losses = train_toy_model(model, toy_pairs, steps=args.steps, learning_rate=3e-3, warmup_steps=50,
                             seed=args.seed)
    print(f"  loss {losses[0]:.2f} -> {sum(losses[-20:]) / 20:.2f} in {time.perf_counter() - start:.0f}s")

    model.generation_config.num_iterations = 4
    model.generation_config.length_beam = 1
    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    print(f"saved to {args.output_dir}/ (safetensors, config, generation config, tokenizer, modeling code)")

    reloaded = AutoModelForSeq2SeqLM.from_pretrained(args.output_dir, trust_remote_code=True).eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(args.output_dir)
    sources = [source for source, _ in test_pairs]
    batch = reloaded_tokenizer(sources, return_tensors="pt", padding=True)
    for iterations in (1, 4):
        output = reloaded.generate(**batch, num_iterations=iterations)
        translations = reloaded_tokenizer.batch_decode(output, skip_special_tokens=True)
        exact = sum(hyp == ref for hyp, (_, ref) in zip(translations, test_pairs, strict=True)) / len(test_pairs)
        print(f"num_iterations={iterations}: exact match {exact:.1%} on {len(test_pairs)} held-out sentences")
    for source, translation in list(zip(sources, translations, strict=True))[:5]:
        print(f"  {source!r} -> {translation!r}")
    return exact


if __name__ == "__main__":
    main()
