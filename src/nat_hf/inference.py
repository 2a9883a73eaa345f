"""Load a saved NAT model (directory or Hub repo id) and translate lists of sentences in length-sorted batches."""

from pathlib import Path

import torch


def load_translator(name_or_path: str | Path, device: str = "cpu", **from_pretrained_kwargs):
    """The model (through `AutoModelForSeq2SeqLM`, remote code allowed) and its tokenizer, ready to translate."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(name_or_path, trust_remote_code=True, **from_pretrained_kwargs)
    model = model.to(device).eval()
    return model, AutoTokenizer.from_pretrained(name_or_path)


def output_limit(config) -> int:
    """The longest output a model's position tables allow. A NAT model has `max_target_positions`; an AR model
    predicts its n-th token from decoder position n - 1 (the start token sits at 0), so it reaches
    `max_position_embeddings` tokens."""
    return getattr(config, "max_target_positions", None) or config.max_position_embeddings


def with_output_length_cap(model, generate_kwargs: dict) -> dict:
    """`generate_kwargs`, plus `max_new_tokens` for an autoregressive model when neither the call nor the model's
    generation config caps the output: transformers would otherwise stop at its model-agnostic `max_length=20`
    and silently cut longer translations. The cap is one below the longest output the model's positions allow;
    decoding still ends at end-of-sentence. NAT models (which have `refine`) cap their lengths themselves."""
    from transformers import GenerationConfig

    generation_config = model.generation_config
    if (hasattr(model, "refine") or "max_new_tokens" in generate_kwargs or "max_length" in generate_kwargs
            or generation_config.max_new_tokens is not None
            or generation_config.max_length != GenerationConfig().max_length):
        return generate_kwargs
    # one below `output_limit`, as first shipped (tests pin it): a conservative margin, not a necessity
    return {**generate_kwargs, "max_new_tokens": output_limit(model.config) - 1}


@torch.no_grad()
def translate_texts(model, tokenizer, sources: list[str], batch_size: int = 50, truncation: bool = False,
                    **generate_kwargs) -> list[str]:
    """Translate `sources` in batches of similar length (less padding); translations come back in input order.

    `truncation=False` makes a source longer than `max_source_positions` an error rather than cutting it."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    config = model.config  # NAT models name the limit max_source_positions, Marian/BART max_position_embeddings
    max_length = getattr(config, "max_source_positions", None) or getattr(config, "max_position_embeddings", None)
    order = sorted(range(len(sources)), key=lambda index: len(sources[index]))
    translations = [""] * len(sources)
    device = next(model.parameters()).device
    generate_kwargs = with_output_length_cap(model, generate_kwargs)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        limit = {"truncation": True, "max_length": max_length} if truncation and max_length else {}
        batch = tokenizer([sources[i] for i in indices], return_tensors="pt", padding=True, **limit).to(device)
        if max_length and batch["input_ids"].shape[1] > max_length:
            raise ValueError(f"a source has {batch['input_ids'].shape[1]} tokens but the model accepts at most "
                             f"{max_length}; pass truncation=True to cut it")
        output = model.generate(**batch, **generate_kwargs)
        for index, text in zip(indices, tokenizer.batch_decode(output, skip_special_tokens=True), strict=True):
            translations[index] = text
    return translations
