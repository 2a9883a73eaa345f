"""CTranslate2 versions of our Marian-architecture AR models: what a CPU user picks today for fast translation,
and so the bar NAT must clear (`backend=ctranslate2` systems in `nat-hf bench speed`).

CTranslate2's Marian converter is written for OPUS-MT checkpoints: it assumes `<pad>` is the last vocabulary id
(appended by transformers), drops that embedding row, and starts the decoder from a zero vector. Our models keep
`<pad>` at id 0 and, since the output layer is tied to the embeddings, start the decoder from a trained, non-zero
`<pad>` embedding; converted the stock way they translate differently from transformers. `convert_marian` uses a
loader that keeps every row and starts the decoder from `<pad>` (`decoder_start_token_id`), as transformers does;
the test checks that both produce the same greedy translations.
"""

import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def pad_first_marian_loader():
    """Temporarily register, for `MarianConfig`, a converter that keeps the vocabulary whole and starts the
    decoder from the `<pad>` embedding (the architecture is otherwise Marian's: post-norm, no embedding norm)."""
    from ctranslate2.converters import transformers as ct2

    class PadFirstMarianLoader(ct2.MarianMTLoader):
        def get_model_spec(self, model):
            model.config.normalize_before = False
            model.config.normalize_embedding = False
            return ct2.BartLoader.get_model_spec(self, model)  # no removal of a trailing <pad> row

        def get_vocabulary(self, model, tokenizer):
            return ct2.BartLoader.get_vocabulary(self, model, tokenizer)

        def set_config(self, config, model, tokenizer):
            ct2.BartLoader.set_config(self, config, model, tokenizer)  # decoder_start_token = <pad>
            config.bos_token = tokenizer.bos_token or tokenizer.pad_token  # unused, but must be a string

        def set_decoder(self, spec, decoder):
            ct2.BartLoader.set_decoder(self, spec, decoder)  # start from the <pad> embedding, not from zeros

    stock = ct2._MODEL_LOADERS["MarianConfig"]
    ct2._MODEL_LOADERS["MarianConfig"] = PadFirstMarianLoader()
    try:
        yield
    finally:
        ct2._MODEL_LOADERS["MarianConfig"] = stock


def convert_marian(model_dir: str | Path, output_dir: str | Path, quantization: str | None = None) -> Path:
    """Convert a `MarianMTModel` directory (with its tokenizer) to a CTranslate2 model directory."""
    import ctranslate2
    from transformers import AutoTokenizer

    with pad_first_marian_loader():
        ctranslate2.converters.TransformersConverter(str(model_dir)).convert(
            str(output_dir), quantization=quantization, force=True)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(output_dir)
    return Path(output_dir)


class CTranslate2Model:
    """Translate with a converted model; `generate_texts(texts)` mirrors HF greedy/beam search."""

    def __init__(self, model_dir: str | Path, compute_type: str = "default", threads: int = 1, cache_dir=None):
        import ctranslate2
        from transformers import AutoTokenizer

        cache_dir = Path(cache_dir or tempfile.mkdtemp(prefix="nat-hf-ct2-"))
        converted = cache_dir / f"ct2-{compute_type}"
        if not (converted / "model.bin").is_file():
            convert_marian(model_dir, converted, None if compute_type == "default" else compute_type)
        self.tokenizer = AutoTokenizer.from_pretrained(converted)
        self.translator = ctranslate2.Translator(str(converted), device="cpu", compute_type=compute_type,
                                                 intra_threads=threads, inter_threads=1)

    def generate_texts(self, texts: list[str], beam_size: int = 1, max_decoding_length: int = 128) -> list[str]:
        sources = [self.tokenizer.convert_ids_to_tokens(ids) for ids in self.tokenizer(texts)["input_ids"]]
        results = self.translator.translate_batch(sources, beam_size=beam_size,
                                                  max_decoding_length=max_decoding_length)
        ids = [self.tokenizer.convert_tokens_to_ids(result.hypotheses[0]) for result in results]
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)
