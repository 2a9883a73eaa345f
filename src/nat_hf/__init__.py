"""nat-hf: non-autoregressive sequence-to-sequence models as Hugging Face `PreTrainedModel`s.

Importing the package registers `NATConfig` and `NATForConditionalGeneration` with the transformers Auto classes,
and marks them for remote code so that `save_pretrained` writes `auto_map` and the modeling source.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .configuration_nat import NATConfig
from .modeling_nat import NATForConditionalGeneration, NATGenerateOutput, NATModel, NATSeq2SeqLMOutput

AutoConfig.register(NATConfig.model_type, NATConfig, exist_ok=True)
AutoModel.register(NATConfig, NATModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(NATConfig, NATForConditionalGeneration, exist_ok=True)
NATConfig.register_for_auto_class()
NATModel.register_for_auto_class("AutoModel")
NATForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")

__version__ = "0.1.0"
__all__ = [
    "NATConfig",
    "NATForConditionalGeneration",
    "NATGenerateOutput",
    "NATModel",
    "NATSeq2SeqLMOutput",
]
