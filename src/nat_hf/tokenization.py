"""Train a joint source+target subword vocabulary and wrap it as a `PreTrainedTokenizerFast`.

The special tokens come first, in a fixed order, so that their ids match `NATConfig`'s defaults (and the shared
Multi30k AR teacher's tokenizer): `<pad>`=0, `</s>`=1, `<unk>`=2, `<mask>`=3, then `<blank>`=4 when asked for.
Every encoded sentence is closed by `</s>`. The result saves as a single `tokenizer.json` that `AutoTokenizer`
loads without this package.
"""

from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK, MASK, BLANK = "<pad>", "</s>", "<unk>", "<mask>", "<blank>"
ALGORITHMS = ("unigram", "bpe")


def train_tokenizer(
    files: Sequence[str | Path] | None = None,
    texts: Iterable[str] | None = None,
    vocab_size: int = 8000,
    algorithm: str = "unigram",
    with_blank: bool = True,
    model_max_length: int = 256,
) -> PreTrainedTokenizerFast:
    """Train a subword vocabulary on text files (one sentence per line) or on an iterable of sentences.

    Args:
        files: text files to learn from (give source and target files together for a joint vocabulary).
        texts: sentences to learn from, instead of (or besides) files.
        vocab_size: size of the vocabulary, special tokens included.
        algorithm: `"unigram"` (SentencePiece-style Unigram LM) or `"bpe"`.
        with_blank: add `<blank>` (id 4), for CTC-style objectives.
        model_max_length: longest encoding, in tokens; pass `truncation=True` when encoding to enforce it (set it
            to the model's `max_source_positions`).

    Returns:
        A `PreTrainedTokenizerFast` with pad, eos, unk and mask tokens (and `<blank>`), appending `</s>`.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    special_tokens = [PAD, EOS, UNK, MASK] + ([BLANK] if with_blank else [])
    if vocab_size <= len(special_tokens):
        raise ValueError(f"vocab_size must exceed the {len(special_tokens)} special tokens, got {vocab_size}")
    files = [str(path) for path in files or []]
    missing = [path for path in files if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"tokenizer training files not found: {missing}")
    if not files and texts is None:
        raise ValueError("give `files` or `texts` to train the tokenizer on")

    if algorithm == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=special_tokens, unk_token=UNK)
    else:
        tokenizer = Tokenizer(models.BPE(unk_token=UNK))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens)
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    if files:
        tokenizer.train(files, trainer)
    if texts is not None:
        tokenizer.train_from_iterator(texts, trainer)
    for expected_id, token in enumerate(special_tokens):
        if tokenizer.token_to_id(token) != expected_id:
            raise RuntimeError(f"special token {token} got id {tokenizer.token_to_id(token)}, expected {expected_id}")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, special_tokens.index(EOS))]
    )
    extra = {"extra_special_tokens": {"blank_token": BLANK}} if with_blank else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        mask_token=MASK,
        model_max_length=model_max_length,
        **extra,
    )


def config_kwargs_from_tokenizer(tokenizer) -> dict:
    """The `NATConfig` arguments that must agree with a tokenizer: vocabulary size and special token ids."""
    blank_id = tokenizer.convert_tokens_to_ids(BLANK) if BLANK in tokenizer.get_vocab() else None
    for name in ("pad_token_id", "eos_token_id", "mask_token_id"):
        if getattr(tokenizer, name) is None:
            raise ValueError(f"the tokenizer has no {name.removesuffix('_id')}; NAT models need pad, eos and mask")
    return {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "unk_token_id": tokenizer.unk_token_id,
        "mask_token_id": tokenizer.mask_token_id,
        "blank_token_id": blank_id,
    }
