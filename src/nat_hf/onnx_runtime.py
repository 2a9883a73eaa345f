"""NAT models as ONNX graphs run by ONNX Runtime: `export_onnx` (`nat-hf export MODEL OUT [--int8]`) and
`ORTNATForConditionalGeneration`, whose `generate` has the torch model's API, options and outputs.

Layout of an exported directory (optimum's names for the encoder and decoder of a seq2seq model):

    encoder_model.onnx   input_ids, attention_mask [batch, source] -> last_hidden_state [batch, source, d_model]
    decoder_model.onnx   decoder_input_ids, decoder_attention_mask [batch, target], encoder_hidden_states,
                         attention_mask (and input_ids for a copy-mode decoder) -> last_hidden_state
    lm_head.onnx         hidden_states [positions, d_model] -> logits [positions, vocab]
    <head>.onnx          each head of the model's method (`length_predictor`: pooled states -> length logits;
                         `link_scorer`: hidden_states, mask -> DAG link log-probabilities)
    *_quantized.onnx     the same graphs with int8 weights (ONNX Runtime dynamic quantisation), with --int8
    config.json, generation_config.json, tokenizer files, onnx_export.json (what was exported, opset, versions)

Where optimum's conventions do not fit: a NAT decoder has no past key values (no `decoder_with_past_model.onnx`):
each pass reads the whole target; its output projection is a graph of its own because the methods project chunks
of positions (bounded logits memory) and only some positions; and the method's heads are graphs of their own.

The decoding loops are the methods' own (`nat_hf/method_*.py`, unchanged): `ORTNATForConditionalGeneration`
offers the backbone interface they call (`model.model.encode / make_context / decode`, `model.lm_head`, the
heads), each backed by an ONNX Runtime session, and borrows the torch model's `generate` and checks. So every
method and decoding option works as in torch, and outputs equal torch's up to float rounding.
"""

import json
from pathlib import Path

import numpy as np
import torch

from .configuration_nat import NATConfig
from .modeling_nat import NATEncoderContext, NATForConditionalGeneration, NATPreTrainedModel

GRAPHS = ("encoder_model", "decoder_model", "lm_head")
EXPORT_REPORT = "onnx_export.json"


class ExportError(ValueError):
    """An export that cannot be done as asked (missing model, existing output, unsupported model)."""


# ------------------------------------------------------------------------------------------------ export
class _EncoderGraph(torch.nn.Module):
    def __init__(self, model: NATForConditionalGeneration):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.model.encode(input_ids, attention_mask.bool())


class _DecoderGraph(torch.nn.Module):
    def __init__(self, model: NATForConditionalGeneration):
        super().__init__()
        self.model = model

    def forward(self, decoder_input_ids, decoder_attention_mask, encoder_hidden_states, attention_mask,
                input_ids=None) -> torch.Tensor:
        context = self.model.model.make_context(input_ids, attention_mask.bool(), encoder_hidden_states)
        return self.model.model.decode(decoder_input_ids, decoder_attention_mask.bool(), context)


class _MaskedHeadGraph(torch.nn.Module):
    """A head of (hidden_states, mask) with the mask as int64 at the graph boundary."""

    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.head = head

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(hidden_states, mask.bool())


def _export(module: torch.nn.Module, args: tuple, names: list[str], output: str, dynamic: dict, path: Path,
            opset: int | None) -> None:
    from torch.export import Dim

    dims = {}
    shapes = {name: {axis: dims.setdefault(dim, Dim(dim)) for axis, dim in axes.items()}
              for name, axes in dynamic.items()}
    module.eval()  # the wrapper too (its model is already in eval mode): no training-mode export
    torch.onnx.export(module, args, str(path), input_names=names, output_names=[output],
                      dynamic_shapes=tuple(shapes.get(name) for name in names), dynamo=True, verbose=False,
                      opset_version=opset)


def export_onnx(model_dir: str | Path, output_dir: str | Path, int8: bool = False, opset: int | None = None,
                overwrite: bool = False) -> dict:
    """Export the NAT model saved in `model_dir` (a directory or Hub repo id) to `output_dir` (see the module
    docstring); `int8` also writes dynamically quantised graphs. Returns the export report (also written as
    `onnx_export.json`). Raises `ExportError` naming the problem."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from .inference import TOKENIZER_FILES, is_hub_repo_id

    if not Path(model_dir).exists() and not is_hub_repo_id(str(model_dir)):
        raise ExportError(f"model directory {model_dir} not found")
    if not Path(model_dir, "config.json").is_file() and Path(model_dir).exists():
        raise ExportError(f"model directory {model_dir} has no config.json: it is not a saved model")
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise ExportError(f"output directory {output_dir} is not empty (pass overwrite=True / --overwrite)")
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, trust_remote_code=True)
    except (OSError, ValueError) as error:
        raise ExportError(f"could not load a model from {model_dir}: {error}") from error
    local = Path(model_dir).exists()
    # a local model without tokenizer files is exported without (put one beside the graphs to translate text)
    has_tokenizer = not local or any(Path(model_dir, name).is_file() for name in TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(model_dir) if has_tokenizer else None
    if getattr(model, "nat_method", None) is None:
        raise ExportError(f"{model_dir} is not a NAT model ({type(model).__name__}); export AR models with optimum")
    model = model.float().eval()
    config = model.config
    output_dir.mkdir(parents=True, exist_ok=True)
    ids = torch.tensor([[5, 6, 7, 8, 1], [9, 10, 1, 0, 0]]).clamp(max=config.vocab_size - 1)
    ids[0, -1] = ids[1, 2] = config.eos_token_id
    ids[1, 3:] = config.pad_token_id
    mask = (torch.arange(5)[None, :] < torch.tensor([[5], [3]])).long()
    with torch.no_grad():
        hidden = model.model.encode(ids, mask.bool())
        _export(_EncoderGraph(model), (ids, mask), ["input_ids", "attention_mask"], "last_hidden_state",
                {"input_ids": {0: "batch", 1: "source"}, "attention_mask": {0: "batch", 1: "source"}},
                output_dir / "encoder_model.onnx", opset)
        targets = torch.full((2, 6), config.mask_token_id)
        target_mask = (torch.arange(6)[None, :] < torch.tensor([[6], [4]])).long()
        names = ["decoder_input_ids", "decoder_attention_mask", "encoder_hidden_states", "attention_mask"]
        args = (targets, target_mask, hidden, mask)
        if config.decoder_input_mode == "copy":  # a copy-mode decoder reads the source ids
            names, args = [*names, "input_ids"], (*args, ids)
        _export(_DecoderGraph(model), args, names, "last_hidden_state",
                {"decoder_input_ids": {0: "batch", 1: "target"}, "decoder_attention_mask": {0: "batch", 1: "target"},
                 "encoder_hidden_states": {0: "batch", 1: "source"}, "attention_mask": {0: "batch", 1: "source"},
                 "input_ids": {0: "batch", 1: "source"}}, output_dir / "decoder_model.onnx", opset)
        _export(model.lm_head, (torch.randn(3, config.d_model),), ["hidden_states"], "logits",
                {"hidden_states": {0: "positions"}}, output_dir / "lm_head.onnx", opset)
        heads = {}
        for name in model.nat_method.heads(config):
            head = getattr(model.model, name)
            if isinstance(head, torch.nn.Linear):  # on pooled states, e.g. the length predictor
                _export(head, (torch.randn(2, head.in_features),), ["hidden_states"], "logits",
                        {"hidden_states": {0: "batch"}}, output_dir / f"{name}.onnx", opset)
                heads[name] = "linear"
            else:  # a head of the decoder states and their mask, e.g. the DAG link scorer
                _export(_MaskedHeadGraph(head), (torch.randn(2, 6, config.d_model), target_mask),
                        ["hidden_states", "mask"], "output",
                        {"hidden_states": {0: "batch", 1: "target"}, "mask": {0: "batch", 1: "target"}},
                        output_dir / f"{name}.onnx", opset)
                heads[name] = "masked"
    graphs = [*GRAPHS, *heads]
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        for graph in graphs:
            quantize_dynamic(output_dir / f"{graph}.onnx", output_dir / f"{graph}_quantized.onnx",
                             weight_type=QuantType.QInt8)
    config.save_pretrained(output_dir)
    model.generation_config.save_pretrained(output_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    import onnxruntime

    report = {"source": str(model_dir), "objective": config.objective, "graphs": graphs, "heads": heads,
              "int8": int8, "opset": opset, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    (output_dir / EXPORT_REPORT).write_text(json.dumps(report, indent=1) + "\n")
    return report


# ------------------------------------------------------------------------------------------------ runtime
class _Session:
    """One ONNX Runtime session called with torch tensors, returning its single output as a torch tensor."""

    def __init__(self, path: Path, threads: int | None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        # no busy-waiting after a run: decoding alternates ONNX Runtime graphs with torch ops (Mask-Predict's
        # re-masking, the DAG's path search, the bench's other systems), which ORT's spinning threads would starve
        # (measured: a DAG Viterbi decode 57 ms with spinning, eager torch beside it 112 ms instead of 31)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [entry.name for entry in self.session.get_inputs()]

    def __call__(self, **inputs: torch.Tensor) -> torch.Tensor:
        feed = {name: _numpy(inputs[name]) for name in self.input_names}
        return torch.from_numpy(self.session.run(None, feed)[0])


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.bool:
        tensor = tensor.long()
    return tensor.detach().contiguous().cpu().numpy()


class _Projection:
    """`lm_head` / a linear head: any leading shape `[..., d_model]` -> `[..., out_features]`."""

    def __init__(self, session: _Session):
        self.session = session
        self.out_features = session.session.get_outputs()[0].shape[-1]  # static: the vocabulary / classes

    def __call__(self, hidden_states: torch.Tensor) -> torch.Tensor:
        flat = hidden_states.reshape(-1, hidden_states.shape[-1]).float()
        output = self.session(hidden_states=flat)
        return output.view(*hidden_states.shape[:-1], output.shape[-1])


class _MaskedHead:
    def __init__(self, session: _Session):
        self.session = session

    def __call__(self, hidden_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.session(hidden_states=hidden_states.float(), mask=mask)


class ORTNATBackbone:
    """The backbone interface the methods' decoding calls (`NATModel`'s `encode`, `make_context`, `decode` and
    its heads as attributes), each step one ONNX Runtime session."""

    def __init__(self, directory: Path, suffix: str, threads: int | None, heads: dict[str, str]):
        self.encoder = _Session(directory / f"encoder_model{suffix}.onnx", threads)
        self.decoder = _Session(directory / f"decoder_model{suffix}.onnx", threads)
        for name, kind in heads.items():
            session = _Session(directory / f"{name}{suffix}.onnx", threads)
            setattr(self, name, _Projection(session) if kind == "linear" else _MaskedHead(session))

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask)

    def make_context(self, input_ids, attention_mask, encoder_hidden_states, precompute_cross_attention=False
                     ) -> NATEncoderContext:
        """The decoder graph computes its cross-attention keys from the encoder states at each pass."""
        return NATEncoderContext(hidden_states=encoder_hidden_states, attention_mask=attention_mask,
                                 input_ids=input_ids, cross_attention_mask=None)

    def decode(self, decoder_input_ids, target_mask, context, self_attention_mask=None) -> torch.Tensor:
        return self.decoder(decoder_input_ids=decoder_input_ids, decoder_attention_mask=target_mask,
                            encoder_hidden_states=context.hidden_states, attention_mask=context.attention_mask,
                            input_ids=context.input_ids)


class ORTNATForConditionalGeneration:
    """An exported NAT model (`export_onnx`) run by ONNX Runtime on CPU: `generate` takes and returns what
    `NATForConditionalGeneration.generate` does (the same method options, checks and errors).

    `from_pretrained(directory, int8=False, threads=None)`: `int8` loads the quantised graphs; `threads` sets
    ONNX Runtime's intra-op threads (None: its default, one per core)."""

    # the torch model's decoding entry points, unchanged: they read `config`, `generation_config`, `nat_method`
    # and call the backbone interface (`model`, `lm_head`, `prepare_decoder_mask`)
    nat_method = NATPreTrainedModel.nat_method
    _ids_or_embeds = NATPreTrainedModel._ids_or_embeds
    _check_vocabulary = NATPreTrainedModel._check_vocabulary
    _check_source = NATPreTrainedModel._check_source
    _generation_options = NATForConditionalGeneration._generation_options
    generate = NATForConditionalGeneration.generate

    def __init__(self, directory: str | Path, int8: bool = False, threads: int | None = None):
        from transformers import GenerationConfig

        directory = Path(directory)
        report_path = directory / EXPORT_REPORT
        if not report_path.is_file():
            raise FileNotFoundError(f"{directory} is not an exported NAT model: {EXPORT_REPORT} is missing "
                                    "(export one with nat-hf export)")
        report = json.loads(report_path.read_text())
        if int8 and not report["int8"]:
            raise ValueError(f"{directory} has no int8 graphs: export with --int8")
        self.config = NATConfig.from_pretrained(directory)
        self.generation_config = GenerationConfig.from_pretrained(directory)
        suffix = "_quantized" if int8 else ""
        self.model = ORTNATBackbone(directory, suffix, threads, report["heads"])
        self.lm_head = _Projection(_Session(directory / f"lm_head{suffix}.onnx", threads))
        self.int8, self.threads, self.name_or_path = int8, threads, str(directory)
        self.device = torch.device("cpu")

    @classmethod
    def from_pretrained(cls, directory: str | Path, int8: bool = False, threads: int | None = None
                        ) -> "ORTNATForConditionalGeneration":
        return cls(directory, int8=int8, threads=threads)

    def prepare_decoder_mask(self, lengths: torch.Tensor, target_len: int, context) -> None:
        """The decoder graph builds its attention mask from `decoder_attention_mask`."""
        return None

    def parameters(self):
        """No torch parameters (for code that reads the device from them)."""
        yield torch.empty(0)

    def eval(self) -> "ORTNATForConditionalGeneration":
        return self

    def to(self, device) -> "ORTNATForConditionalGeneration":
        if torch.device(device).type != "cpu":
            raise ValueError("ORTNATForConditionalGeneration runs on CPU (ONNX Runtime's CPU provider)")
        return self


def is_onnx_export(path: str | Path) -> bool:
    """Whether `path` is a directory written by `export_onnx`."""
    return (Path(path) / EXPORT_REPORT).is_file()


def main(argv: list[str] | None = None) -> dict:
    """`nat-hf export MODEL OUT [--int8] [--opset N] [--overwrite]`."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="nat-hf export", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a saved NAT model directory or Hub repo id")
    parser.add_argument("output", type=Path, help="the directory to write the graphs, config and tokenizer to")
    parser.add_argument("--int8", action="store_true", help="also write int8 graphs (dynamic quantisation)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output directory")
    args = parser.parse_args(argv)
    try:
        report = export_onnx(args.model, args.output, int8=args.int8, opset=args.opset, overwrite=args.overwrite)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    print(json.dumps(report, indent=1))
    return report


__all__ = ["ExportError", "ORTNATForConditionalGeneration", "export_onnx", "is_onnx_export"]
