"""`pipeline("nat-translation", model=...)`: translation with a NAT model (transformers 5 has no translation
pipeline). Registered by `import nat_hf`; saved models name it in `config.custom_pipelines`, so
`pipeline(model=DIR_OR_REPO, trust_remote_code=True)` finds it without nat_hf installed."""

from transformers import Pipeline

TASK = "nat-translation"


class NATTranslationPipeline(Pipeline):
    """Translate a string or a list of strings; returns `[{"translation_text": ...}, ...]`.

    Call-time options: `num_iterations`, `length_beam`, `max_new_tokens` (decoding), `truncation` (default
    `False`: a source longer than the model accepts raises an error instead of being cut), `batch_size`.
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False

    def _sanitize_parameters(self, truncation=None, num_iterations=None, length_beam=None, max_new_tokens=None,
                             **kwargs):
        preprocess = {} if truncation is None else {"truncation": truncation}
        forward = {name: value for name, value in (("num_iterations", num_iterations), ("length_beam", length_beam),
                                                   ("max_new_tokens", max_new_tokens)) if value is not None}
        return preprocess, forward, {}

    def __call__(self, inputs, **kwargs):
        if isinstance(inputs, str):
            return [super().__call__(inputs, **kwargs)]
        if not isinstance(inputs, list) or not all(isinstance(text, str) for text in inputs):
            raise TypeError("nat-translation takes a string or a list of strings")
        return super().__call__(inputs, **kwargs)

    def preprocess(self, text: str, truncation: bool = False):
        limit = {"truncation": True, "max_length": self.model.config.max_source_positions} if truncation else {}
        return self.tokenizer(text, return_tensors="pt", **limit)

    def _forward(self, model_inputs, **generate_kwargs):
        return {"output_ids": self.model.generate(**model_inputs, **generate_kwargs)}

    def postprocess(self, model_outputs):
        output_ids = model_outputs["output_ids"][0]
        return {"translation_text": self.tokenizer.decode(output_ids, skip_special_tokens=True)}
