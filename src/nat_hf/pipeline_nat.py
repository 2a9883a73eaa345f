"""`pipeline("nat-translation", model=...)`: translation with a NAT model (transformers 5 has no translation
pipeline). Registered by `import nat_hf`; saved models name it in `config.custom_pipelines`, so
`pipeline(model=DIR_OR_REPO, trust_remote_code=True)` finds it without nat_hf installed. Shipped as remote code
beside every saved model: it imports transformers only."""

from transformers import Pipeline

TASK = "nat-translation"
# options of `Pipeline.__call__` itself, not of decoding
PIPELINE_CALL_OPTIONS = ("batch_size", "num_workers")


class NATTranslationPipeline(Pipeline):
    """Translate a string or a list of strings; returns `[{"translation_text": ...}, ...]`.

    Call-time options: `truncation` (default `False`: a source longer than the model accepts raises an error
    instead of being cut), `batch_size` (a list is batched in order of token length, less padding; the results
    come back in input order), and decoding options, all passed on to `model.generate` (the method's
    options, e.g. `num_iterations`, `length_beam` for cmlm, `decoding_strategy`, `viterbi_length_exponent` for
    dag; `max_new_tokens`, ...). A NAT model checks them (through its method) when they are given, so a bad one,
    or an option only another method has, raises `ValueError` naming it before any sentence is translated. A blank
    (empty or whitespace-only) source translates to an empty string without running the model.
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False

    def _sanitize_parameters(self, truncation=None, **generate_kwargs):
        preprocess = {} if truncation is None else {"truncation": truncation}
        check = getattr(self.model, "_generation_options", None)  # NAT models validate their decoding options
        if check is not None:
            # the options fixed when the pipeline was built count too; `check` pops from the dict, so a copy
            options = {**getattr(self, "_forward_params", {}), **generate_kwargs}
            check(options.pop("generation_config", None), options)
        return preprocess, generate_kwargs, {}

    def __call__(self, inputs, **kwargs):
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            raise TypeError("nat-translation takes a string or a list of strings")
        keep = [index for index, text in enumerate(texts) if text.strip()]
        if not keep:  # nothing to run the model on; still reject bad options
            self._sanitize_parameters(**{k: v for k, v in kwargs.items() if k not in PIPELINE_CALL_OPTIONS})
            return [{"translation_text": ""} for _ in texts]
        if isinstance(inputs, str):
            return [super().__call__(inputs, **kwargs)]
        # batches of similar length pad less: translate in token-length order, answer in input order
        lengths = [len(ids) for ids in self.tokenizer([texts[index] for index in keep])["input_ids"]]
        keep = [index for _, index in sorted(zip(lengths, keep, strict=True))]
        translated = super().__call__([texts[index] for index in keep], **kwargs)
        outputs = [{"translation_text": ""} for _ in texts]
        for index, output in zip(keep, translated, strict=True):
            outputs[index] = output
        return outputs

    def preprocess(self, text: str, truncation: bool = False):
        config = self.model.config
        max_length = getattr(config, "max_source_positions", None) or getattr(config, "max_position_embeddings", None)
        limit = {"truncation": True, "max_length": max_length} if truncation and max_length else {}
        return self.tokenizer(text, return_tensors="pt", **limit)

    def _forward(self, model_inputs, **generate_kwargs):
        output = self.model.generate(**model_inputs, **generate_kwargs)
        return {"output_ids": getattr(output, "sequences", output)}  # return_dict_in_generate gives an output object

    def postprocess(self, model_outputs):
        output_ids = model_outputs["output_ids"][0]
        return {"translation_text": self.tokenizer.decode(output_ids, skip_special_tokens=True)}
