"""nat-hf: non-autoregressive sequence-to-sequence models as Hugging Face `PreTrainedModel`s.

Importing the package registers `NATConfig` and `NATForConditionalGeneration` (and the adversarial training's
`NATDiscriminator`) with the transformers Auto classes, and marks the NAT model for remote code so that
`save_pretrained` writes `auto_map` and the modeling source.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_nat import NATConfig
from .data import DataCollatorForNAT
from .modeling_discriminator import NATDiscriminator, NATDiscriminatorConfig
from .modeling_nat import NATForConditionalGeneration, NATGenerateOutput, NATModel, NATSeq2SeqLMOutput
from .pipeline_nat import TASK as PIPELINE_TASK
from .pipeline_nat import NATTranslationPipeline

AutoConfig.register(NATConfig.model_type, NATConfig, exist_ok=True)
AutoModel.register(NATConfig, NATModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(NATConfig, NATForConditionalGeneration, exist_ok=True)
AutoConfig.register(NATDiscriminatorConfig.model_type, NATDiscriminatorConfig, exist_ok=True)
AutoModel.register(NATDiscriminatorConfig, NATDiscriminator, exist_ok=True)  # adversarial training's
NATConfig.register_for_auto_class()
NATModel.register_for_auto_class("AutoModel")
NATForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
PIPELINE_REGISTRY.register_pipeline(PIPELINE_TASK, pipeline_class=NATTranslationPipeline,
                                    pt_model=AutoModelForSeq2SeqLM, type="text")

__version__ = "0.1.0"
__all__ = [
    "DataCollatorForNAT",
    "NATDiscriminator",
    "NATDiscriminatorConfig",
    "NATTranslationPipeline",
    "NATConfig",
    "NATForConditionalGeneration",
    "NATGenerateOutput",
    "NATModel",
    "NATSeq2SeqLMOutput",
]
