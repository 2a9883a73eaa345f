"""Model cards and Hub uploads: `nat-hf card MODEL_DIR` and `nat-hf push MODEL_DIR REPO_ID [--dry-run]`.

The card is filled from measured results only: the training run's `results.json` (found next to the model
directory, as `train.py` leaves it) and optional `nat-hf bench speed` / `bench quality` JSON files. It is read by
strangers on the Hub, so it names data and models publicly, never by a path of the machine that wrote it:

- the training data by its Hub dataset (`DATASETS` below recognises a local text copy of a known dataset by its
  directory name; `--data-name` names any other), with its split sizes and the local-to-Hub split names;
- a teacher (distillation, `--distilled-by` or the data directory's `distill_report.json`) and an AR
  initialisation (`model.init_from_ar`) by what they are (architecture, size, data, measured BLEU, read from their
  `config.json`, weights and `eval.json` / `results.json`), named by `--teacher-name` if given;
- the reproduction commands with placeholders (`NAT_HF_DATA_DIR=<multi30k text dir>`) and the training config with
  every local path turned into such a variable (`load_config` expands them).
"""

import argparse
import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .inference import is_hub_repo_id

TEMPLATE = Path(__file__).with_name("model_card_template.md")  # also reachable as model_cards/nat_model_card.md
REQUIRED_FILES = ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                  "tokenizer_config.json", "modeling_nat.py", "configuration_nat.py", "README.md")

# Public datasets a card can name. A local copy (text files `{split}.{lang}`) is recognised by a directory in its
# path named as in `local_names`; `splits` maps the local split names (as in the original release) to the Hub
# dataset's names and sizes (sentence pairs). Add an entry to name another dataset, or pass `--data-name`.
DATASETS: dict[str, dict] = {
    "bentrevett/multi30k": {
        "title": "Multi30k",
        "citation": "Elliott, Frank, Sima'an, Specia (2016), \"Multi30K: Multilingual English-German Image "
                    "Descriptions\"",
        "about": "image descriptions (Flickr30k), task 1 of the multi30k/dataset repository, raw cased text",
        "local_names": ("multi30k",),
        "placeholder": "<multi30k text dir>",
        "splits": {"train": ("train", 29000), "val": ("validation", 1014), "test_2016_flickr": ("test", 1000)},
    },
}
DISTILL_REPORT = "distill_report.json"  # written by `nat-hf distill` into its output directory

def describe_objective(objective: str) -> str:
    """What the card says the objective is: its method's `summary` and `paper` (declared in `method_<name>.py`,
    so that a new method brings its own card text), else the first paragraph of the method class's docstring,
    else its name alone."""
    from .methods import METHODS

    method = METHODS.get(objective)
    if method is None:
        return f"the `{objective}` objective of nat-hf"
    if method.summary:
        return f"{method.summary} ({method.paper})" if method.paper else method.summary
    doc = (type(method).__doc__ or "").strip()
    first = " ".join(doc.split("\n\n")[0].split())
    return first.rstrip(".") if first else f"the `{objective}` objective of nat-hf"


def default_decoding(config: dict, generation: dict) -> dict:
    """The decoding a saved model does by default: every option of its method (`NATMethod.option_defaults`), with
    the value of its `generation_config.json` (the method's default where the file has none). Empty for an
    objective this nat_hf does not know."""
    from .methods import METHODS

    method = METHODS.get(config.get("objective"))
    if method is None:
        return {}
    return {name: generation.get(name, default) for name, default in method.option_defaults().items()}


def result_decoding(results: dict) -> dict:
    """The decoding options a training `results.json` scored the model with: its `decoding` mapping (as `nat-hf
    train` writes it since each method declares its own options; `final_decoding` also read), else, for results
    files written before, the option keys at its top level (`num_iterations`, `length_beam`, any method's option,
    `num_beams` of an AR run)."""
    for key in ("decoding", "final_decoding"):
        if isinstance(results.get(key), dict):
            return dict(results[key])
    from .methods import decoding_option_help

    names = [*decoding_option_help(), "num_beams"]
    return {name: results[name] for name in names if name in results}


def result_splits(results: dict) -> list[str]:
    """The splits a training `results.json` scores the best model on (`{split}_bleu`; not the periodic best nor
    the averaged model)."""
    return [key.removesuffix("_bleu") for key in results
            if key.endswith("_bleu") and key != "best_valid_bleu" and not key.startswith("averaged_")]


def load_json(path: Path | None) -> dict | None:
    return json.loads(Path(path).read_text()) if path else None


def describe_options(options: dict) -> str:
    return ", ".join(f"{name}={value}" for name, value in options.items()) or "defaults"


def is_local_path(value: str) -> bool:
    """Whether a model/data reference names something on this machine rather than a Hub id (`owner/name`)."""
    return Path(value).exists() or value.startswith(("/", ".", "~")) or value.count("/") >= 2


def check_public_name(name: str | None, option: str) -> None:
    """A name the card prints must not be a path of this machine."""
    if name is not None and (name.startswith(("/", "~")) or ".." in Path(name).parts or Path(name).exists()):
        raise ValueError(f"{option} {name!r} is a local path, not a public name (a Hub id or a short name)")


def same_path(a: str | Path | None, b: str | Path | None) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def same_model(a: str | None, b: str | None) -> bool:
    """Whether two references (directories or Hub ids) name the same model."""
    return a is not None and b is not None and (a == b or same_path(a, b))


def export_source(reference: str) -> str | None:
    """The model an ONNX export directory (`nat-hf export`) was made from, as its `onnx_export.json` records it
    (relative to the working directory of the export); None for anything else."""
    record = Path(reference) / "onnx_export.json"
    return json.loads(record.read_text()).get("source") if record.is_file() else None


def count_parameters(model_dir: Path) -> int | None:
    weights_file = Path(model_dir) / "model.safetensors"
    if not weights_file.is_file():
        return None
    from safetensors import safe_open

    with safe_open(weights_file, framework="pt") as weights:
        return sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())


@dataclass
class DataInfo:
    """What the card says about the data of a training config."""

    hub_id: str | None  # the public dataset, when known
    title: str
    local: bool  # read from local text files (a copy) rather than from the Hub
    placeholder: str = "<data dir>"
    hub_splits: dict[str, str] = field(default_factory=dict)  # local split name -> Hub split name
    sizes: dict[str, int | None] = field(default_factory=dict)  # split -> sentence pairs
    citation: str | None = None
    about: str | None = None

    def name(self) -> str:
        """A short public name: `Multi30k (bentrevett/multi30k)`."""
        if not self.hub_id:
            return self.title
        link = f"[`{self.hub_id}`](https://huggingface.co/datasets/{self.hub_id})"
        return link if self.hub_id == self.title else f"{self.title} ({link})"


def known_dataset(name: str | None) -> tuple[str | None, dict]:
    """The `DATASETS` entry of a Hub id or a title (case-insensitive); `(name, {})` for another name."""
    if name is None:
        return None, {}
    for hub_id, entry in DATASETS.items():
        if name.lower() in (hub_id.lower(), entry["title"].lower()):
            return hub_id, entry
    return name, {}


def identify_data(data: dict, data_name: str | None = None) -> DataInfo:
    """The public identity of a config's `data` section: `data_name` if given, else the Hub dataset it loads,
    else a `DATASETS` entry whose local name is a directory of its data path; else unnamed local text."""
    directories = [value for value in (data.get("data_dir"), data.get("eval_data_dir")) if value]
    local = bool(directories)
    if data_name is None and not local:
        data_name = data.get("dataset_name")
    if data_name is None:
        parts = {part.lower() for value in directories for path in (Path(value), Path(value).resolve())
                 for part in path.parts}
        data_name = next((hub_id for hub_id, entry in DATASETS.items()
                          if parts & {name.lower() for name in entry["local_names"]}), None)
    hub_id, entry = known_dataset(data_name)
    if hub_id is None:
        return DataInfo(None, "Local parallel text (not published)", local)
    is_hub_id = hub_id in DATASETS or is_hub_repo_id(hub_id)
    info = DataInfo(hub_id if is_hub_id else None, entry.get("title", hub_id), local,
                    entry.get("placeholder", "<data dir>"), citation=entry.get("citation"), about=entry.get("about"))
    for split, (hub_split, size) in entry.get("splits", {}).items():
        key = split if local else hub_split  # the config names the splits as the copy does, or as the Hub does
        info.hub_splits[key], info.sizes[key] = hub_split, size
    return info


def split_sizes(data: dict, info: DataInfo) -> dict[str, int | None]:
    """Sentence pairs of each split the config uses: counted in the local files when they are here, else the
    known size of the dataset's split (None when neither exists)."""
    from .data import read_lines

    splits = [data.get("train_split", "train"), data.get("valid_split", "val"), *(data.get("test_splits") or [])]
    sizes = {}
    for split in dict.fromkeys(splits):
        directory = data.get("data_dir") if split == data.get("train_split", "train") else \
            data.get("eval_data_dir") or data.get("data_dir")
        path = Path(directory or "") / f"{split}.{data.get('source_lang', 'en')}"
        sizes[split] = len(read_lines(path)) if directory and path.is_file() else info.sizes.get(split)
    return sizes


@dataclass
class Distillation:
    teacher: str  # the teacher's directory or Hub id, as given
    num_beams: int
    max_new_tokens: int | None = None


def find_distillation(data: dict, distilled_by: str | None, distill_beams: int | None) -> Distillation | None:
    """Whether the training targets are a teacher's outputs: `--distilled-by` (with `--distill-beams`), else the
    `distill_report.json` that `nat-hf distill` leaves in the training data directory."""
    report_path = Path(data.get("data_dir") or "") / DISTILL_REPORT
    report = json.loads(report_path.read_text()) if data.get("data_dir") and report_path.is_file() else None
    if distilled_by is not None:
        beams = distill_beams if distill_beams is not None else (report or {}).get("num_beams")
        if beams is None:
            raise ValueError("--distilled-by needs --distill-beams (the beam size the teacher decoded with): the "
                             f"data directory has no {DISTILL_REPORT}")
        return Distillation(distilled_by, beams, (report or {}).get("max_new_tokens"))
    if distill_beams is not None:
        raise ValueError("--distill-beams only applies with --distilled-by")
    if report is not None:
        return Distillation(report["teacher"], report["num_beams"], report.get("max_new_tokens"))
    return None


def measured_bleu(model_dir: Path) -> str | None:
    """The model's own measured BLEU: `eval.json` beside the weights (`{"results": {"SPLIT.beamN": {"bleu"}}}`)
    or the `results.json` that `nat-hf train` leaves next to a model directory."""
    model_dir = Path(model_dir)
    if (model_dir / "eval.json").is_file():
        scores: dict[str, list[str]] = {}
        for key, entry in json.loads((model_dir / "eval.json").read_text()).get("results", {}).items():
            split, _, beams = key.rpartition(".beam")
            if split and beams.isdigit() and "bleu" in entry:
                decoding = "greedy" if beams == "1" else f"beam {beams}"
                scores.setdefault(split, []).append(f"{entry['bleu']:.2f} ({decoding})")
        if scores:
            return "; ".join(f"{split} {' / '.join(values)}" for split, values in scores.items())
    results_path = model_dir.parent / "results.json"
    if results_path.is_file():
        results = json.loads(results_path.read_text())
        if results.get("family") == "ar":
            beams = result_decoding(results).get("num_beams", 1)
            decoding = "greedy" if beams == 1 else f"beam {beams}"
        else:
            decoding = describe_options(result_decoding(results))
        splits = result_splits(results)
        if splits:
            return ", ".join(f"{split} {results[split + '_bleu']:.2f}" for split in splits) + f" ({decoding})"
    return None


def describe_model(reference: str, name: str | None = None, data_name: str | None = None,
                   direction: str | None = None) -> str:
    """A public description of a model used in training (teacher, AR initialisation) or compared with: its name
    (a Hub id is linked; a local directory is never printed), architecture, size, training data and measured BLEU,
    from what its directory holds."""
    local = is_local_path(reference)
    if name is None and not local:
        name = reference
    if name and "/" in name and is_hub_repo_id(name):
        label = f"[`{name}`](https://huggingface.co/{name}): "
    else:
        label = f"`{name}` (not on the Hub): " if name else ""
    model_dir = Path(reference)
    if not local:
        return label.removesuffix(": ") + "."
    if not (model_dir / "config.json").is_file():
        return label + "a local model, not described (its files were not found when this card was written)."
    config = json.loads((model_dir / "config.json").read_text())
    family = "non-autoregressive" if config.get("model_type") == "nat" else "autoregressive"
    architecture = (config.get("architectures") or [config.get("model_type", "?")])[0]
    facts = []
    parameters = count_parameters(model_dir)
    if parameters is not None:
        facts.append(f"{parameters / 1e6:.1f}M parameters")
    if "d_model" in config:
        facts.append(f"d_model {config['d_model']}")
    if "encoder_layers" in config and "decoder_layers" in config:
        facts.append(f"{config['encoder_layers']} encoder + {config['decoder_layers']} decoder layers")
    for key, unit in (("encoder_attention_heads", "heads"), ("encoder_ffn_dim", "FFN"), ("vocab_size", "vocabulary")):
        if key in config:
            facts.append(f"{config[key]} {unit}" if unit == "heads" else f"{unit} {config[key]}")
    text = f"{label}an {family} Transformer (transformers `{architecture}`), " + ", ".join(facts)
    own_config = model_dir / "train_config.yaml"
    if own_config.is_file():  # trained by `nat-hf train`: its data is recorded
        data = (yaml.safe_load(own_config.read_text()) or {}).get("data", {})
        text += (f"; trained on {identify_data(data, data_name).name()} "
                 f"{data.get('source_lang', '?')}→{data.get('target_lang', '?')}")
    elif data_name is not None:
        text += f"; trained on {identify_data({}, data_name).name()}" + (f" {direction}" if direction else "")
    else:
        text += "; its training data is not recorded"
    bleu = measured_bleu(model_dir)
    return text + (f"; sacreBLEU {bleu}" if bleu else "") + "."

@dataclass
class Placeholder:
    local: str  # the value in the saved config (a path of the machine that trained)
    variable: str  # environment variable that `load_config` expands
    hint: str  # what a reader puts there


def placeholders(train_config: dict, data_info: DataInfo, ar_hint: str = "<teacher dir>") -> list[Placeholder]:
    """Environment variables for the machine-local paths of a training config: the data root (the evaluation
    data's directory when the training data lies inside it), the AR model of `model.init_from_ar` (NAT_HF_TEACHER,
    as in nat-hf's configs; `ar_hint` says what it is), then any other local model or tokenizer, then any
    remaining absolute or `../` path. The names depend on the config alone, so a card and an upload agree."""
    data, model = train_config.get("data", {}), train_config.get("model", {})
    found: list[Placeholder] = []

    def add(value: str | None, variable: str, hint: str) -> None:  # unless a placeholder found already covers it
        if value and is_local_path(value) and not any(
                Path(value).resolve().is_relative_to(Path(known.local).resolve()) for known in found):
            found.append(Placeholder(value, variable, hint))

    data_dir, eval_dir = data.get("data_dir"), data.get("eval_data_dir")
    root = eval_dir or data_dir
    if data_dir and eval_dir and not Path(data_dir).resolve().is_relative_to(Path(eval_dir).resolve()):
        add(data_dir, "NAT_HF_TRAIN_DIR", "<training data dir>")
    add(root, "NAT_HF_DATA_DIR", data_info.placeholder)
    add(model.get("init_from_ar"), "NAT_HF_TEACHER", ar_hint)
    add(model.get("init_from"), "NAT_HF_INIT", "<NAT model dir>")
    add(data.get("tokenizer"), "NAT_HF_TOKENIZER", "<tokenizer dir>")
    for section, values in train_config.items():
        for key, value in (values or {}).items():
            if isinstance(value, str) and value.startswith(("/", "..", "~")):
                add(value, f"NAT_HF_{section}_{key}".upper(), f"<{section}.{key}>")
    return found


def with_placeholders(value: Any, found: list[Placeholder]) -> Any:
    """`value` (a config, recursively) with each local path replaced by `${VARIABLE}` (its sub-paths by
    `${VARIABLE}/rest`)."""
    if isinstance(value, dict):
        return {key: with_placeholders(item, found) for key, item in value.items()}
    if isinstance(value, list):
        return [with_placeholders(item, found) for item in value]
    if isinstance(value, str) and is_local_path(value):
        resolved = Path(value).resolve()
        for placeholder in sorted(found, key=lambda known: -len(str(Path(known.local).resolve()))):
            root = Path(placeholder.local).resolve()
            if resolved == root:
                return f"${{{placeholder.variable}}}"
            if resolved.is_relative_to(root):
                return f"${{{placeholder.variable}}}/{resolved.relative_to(root).as_posix()}"
    return value


def quality_rows(results: dict | None, quality: dict | None, model_dir: Path, info: DataInfo | None = None,
                 roles: dict[str, str] | None = None) -> tuple[list[str], list]:
    """Markdown rows and model-index `EvalResult`s. Rows of a `bench quality` JSON that measured another model
    (e.g. the AR teacher) are kept as comparisons, named by their label, never by a local path: a local model is
    described below the table, a Hub model named by its id; `roles` maps models the card describes elsewhere
    (the teacher) to their role."""
    from huggingface_hub import EvalResult

    info = info or DataInfo(None, "Local parallel text (not published)", True)
    rows = ["| system | split | BLEU | chrF | decoding |", "| --- | --- | --- | --- | --- |"]
    evals = []
    if results:
        decoding = describe_options(result_decoding(results))
        splits = result_splits(results)
        for split in splits:
            rows.append(f"| this model | {split} | {results[split + '_bleu']:.2f} | {results[split + '_chrf']:.2f} | "
                        f"{decoding} |")
            evals.append(EvalResult(task_type="translation", dataset_type=info.hub_id or "local",
                                    dataset_name=f"{info.title if info.hub_id else 'local data'} {split}",
                                    dataset_split=info.hub_splits.get(split, split), metric_type="bleu",
                                    metric_name="sacreBLEU", metric_value=round(results[split + "_bleu"], 2)))
    described: dict[str, str] = {}
    if quality:
        for label, entry in quality["systems"].items():
            reference = entry["model"]
            if same_path(reference, model_dir):
                name = f"this model ({label})"
            elif same_path(export_source(reference), model_dir):
                name = f"this model on ONNX Runtime ({label})"
            elif any(same_model(reference, known) for known in roles or {}):
                name = f"{label} ({next(role for known, role in roles.items() if same_model(reference, known))})"
            elif not is_local_path(reference):
                name = f"{label} (`{reference}`)"
            else:
                name = label
                described.setdefault(label, describe_model(reference))
            for split, scores in entry["splits"].items():
                rows.append(f"| {name} | {split} | {scores['bleu']:.2f} | {scores['chrf']:.2f} | "
                            f"{describe_options(entry['options'])} |")
    if described:
        rows.append("")
        rows += [f"- {label}: {text}" for label, text in described.items()]
    return rows, evals


def data_section(data: dict, info: DataInfo, distillation: Distillation | None) -> str:
    """The training data paragraph and split table of the card."""
    source, target = data.get("source_lang", "en"), data.get("target_lang", "de")
    lines = [f"{info.name()}, {source}→{target}" + (f": {info.about}" if info.about else "") + "."
             + (f" Cite {info.citation}." if info.citation else "")]
    if info.local and info.hub_id:
        lines.append("Read from a local copy as text files `{split}.{lang}` (one sentence per line)"
                     + (f"; the Hub dataset `{info.hub_id}` holds the same splits under the names below."
                        if info.hub_splits else "."))
    sizes = split_sizes(data, info)
    roles = {data.get("train_split", "train"): "training", data.get("valid_split", "val"): "validation (checkpoint "
             "selection)", **{split: "test" for split in data.get("test_splits") or []}}
    lines += ["", "| split | Hub split | sentence pairs | use |", "| --- | --- | --- | --- |"]
    for split, size in sizes.items():
        hub_split = info.hub_splits.get(split, split if info.hub_id and not info.local else "–")
        lines.append(f"| {split} | {hub_split} | {size if size is not None else 'not recorded'} | {roles[split]} |")
    lines.append("")
    train_split = data.get("train_split", "train")
    if distillation is not None:
        lines.append(f"Training targets: not the references but the teacher's translations of the {train_split} "
                     f"split's sources (sequence-level distillation, Kim & Rush 2016), beam search with "
                     f"{distillation.num_beams} beams (`nat-hf distill`); validation and test use the references.")
    elif data.get("eval_data_dir") and data.get("data_dir") and not same_path(data["data_dir"], data["eval_data_dir"]):
        lines.append(f"Training targets: the {train_split} split of a directory other than the evaluation data's, "
                     "with no distillation report (`nat-hf card --distilled-by` names a teacher).")
    else:
        lines.append("Training targets: the reference translations.")
    return "\n".join(lines)


def method_heads(config: dict) -> list[str]:
    """The heads the model's method adds to the backbone (`NATMethod.heads`, e.g. `length_predictor`,
    `link_scorer`), read by building the saved config; empty when it cannot be built here."""
    from .configuration_nat import NATConfig
    from .methods import METHODS

    method = METHODS.get(config.get("objective"))
    if method is None:
        return []
    try:
        fields = {key: value for key, value in config.items() if not key.startswith("_")}
        return list(method.heads(NATConfig(**fields)))
    except (TypeError, ValueError):
        return []


def training_section(train_config: dict | None, results: dict | None, distillation: Distillation | None,
                     teacher_text: str | None, ar_init_text: str | None, config: dict | None = None) -> str:
    """Steps, the method's training options, initialisation, vocabulary, and the teacher / AR initialisation
    described publicly. `config` is the saved `config.json` (objective, `method_options`, heads)."""
    config = config or {}
    method_options = config.get("method_options") or ((train_config or {}).get("model", {}).get("method_options"))
    options_line = (f"Method options (`{config.get('objective', '?')}`, `NATConfig.method_options`): "
                    + ", ".join(f"`{name}={value}`" for name, value in method_options.items()) + "."
                    if method_options else None)
    if not results:
        return options_line or "Not recorded."
    model = (train_config or {}).get("model", {})
    data = (train_config or {}).get("data", {})
    lines = [f"{results['steps']} steps ({results['train_seconds'] / 60:.0f} minutes of training)"
             + (f", batches of at most {data['max_tokens']} tokens" if data.get("max_tokens") else "")
             + f"; best checkpoint at step {results['best_step']} by validation BLEU."]
    if options_line:
        lines.append(options_line)
    teacher = distillation.teacher if distillation else None
    init_from_ar = model.get("init_from_ar")
    init_is_teacher = bool(init_from_ar) and same_model(init_from_ar, teacher)
    if init_from_ar:
        heads = method_heads(config)
        fresh = f"the {' and '.join(f'`{head}`' for head in heads)} of the method" if heads else \
            "what the AR model has no counterpart for"
        lines.append("Initialisation: the weights of " + ("the teacher" if init_is_teacher else "the AR model below")
                     + f" (`model.init_from_ar`: embeddings, encoder and matching decoder weights; {fresh} and any "
                       "vocabulary rows beyond the AR model's start fresh).")
    tokenizer = data.get("tokenizer")
    if tokenizer and same_model(tokenizer, teacher):
        lines.append("Vocabulary: the teacher's tokenizer.")
    elif tokenizer and same_model(tokenizer, init_from_ar):
        lines.append("Vocabulary: the tokenizer of the AR model below.")
    elif not tokenizer and train_config:
        lines.append(f"Vocabulary: a {data.get('tokenizer_algorithm', 'unigram')} tokenizer of "
                     f"{data.get('vocab_size')} subwords trained on the training data.")
    if teacher_text:
        lines += ["", f"Teacher ({'distillation and initialisation' if init_is_teacher else 'distillation'}): "
                  + teacher_text]
    if ar_init_text:
        lines += ["", f"AR model of the initialisation: {ar_init_text}"]
    return "\n".join(lines)


def reproduce_section(train_config: dict | None, info: DataInfo, distillation: Distillation | None,
                      found: list[Placeholder]) -> str:
    """The commands behind this model, with placeholders for every local path, and the training config."""
    if not train_config:
        return "Not recorded (no `train_config.yaml` in the model directory)."
    data = train_config.get("data", {})
    hints = {placeholder.variable: placeholder.hint for placeholder in found}
    lines = ["With nat-hf installed:", "", "```bash"]
    if info.local:
        splits = ", ".join(dict.fromkeys([data.get("train_split", "train"), data.get("valid_split", "val"),
                                          *(data.get("test_splits") or [])]))
        lines.append(f"# {info.title} as text files {{split}}.{{lang}} ({splits}; languages {data.get('source_lang')}"
                     f", {data.get('target_lang')}), one sentence per line, in {info.placeholder}")
    teacher = None
    if distillation is not None:  # its hint: that of the config's path to the same model, if any
        teacher = next((placeholder.hint for placeholder in found if same_model(placeholder.local,
                                                                                distillation.teacher)),
                       "<teacher dir>" if is_local_path(distillation.teacher) else distillation.teacher)
    used = set(hints.values()) | {teacher}
    if "<teacher dir>" in used:
        lines.append("# <teacher dir>: the teacher described above, as a transformers model directory")
    if "<AR model dir>" in used:
        lines.append("# <AR model dir>: the AR model of the initialisation described above")
    if distillation is not None:
        config_data = with_placeholders(data, found)
        output = config_data.get("data_dir") or "<distilled data dir>"
        source = config_data.get("eval_data_dir") or "<data dir>"
        for placeholder in found:
            output = output.replace(f"${{{placeholder.variable}}}", placeholder.hint)
            source = source.replace(f"${{{placeholder.variable}}}", placeholder.hint)
        lines.append(f"nat-hf distill {teacher} --data-dir {source} --output-dir {output} "
                     f"--splits {data.get('train_split', 'train')} --source-lang {data.get('source_lang')} "
                     f"--target-lang {data.get('target_lang')} --num-beams {distillation.num_beams}"
                     + (f" --max-new-tokens {distillation.max_new_tokens}" if distillation.max_new_tokens else ""))
    variables = " ".join(f"{placeholder.variable}={placeholder.hint}" for placeholder in found)
    lines += ["# train_config.yaml: the config below", f"{variables + ' ' if variables else ''}nat-hf train "
              "train_config.yaml", "```", "", "<details><summary>train_config.yaml</summary>", "", "```yaml",
              yaml.safe_dump(with_placeholders(train_config, found), sort_keys=False).rstrip(), "```", "",
              "</details>"]
    return "\n".join(lines)


def speed_rows(speed: dict | None) -> list[str]:
    if not speed:
        return ["Not measured yet for this model (`nat-hf bench speed`)."]
    sizes, baselines = speed["batch_sizes"], speed.get("baselines", [])
    rows = ["| system | latency batch 1 (ms, median) | " + " | ".join(f"sent/s @ {s}" for s in sizes) + " | "
            + "".join(f"speed-up vs {baseline} (batch 1) | " for baseline in baselines),
            "| --- | --- | " + " | ".join("---" for _ in sizes) + " |" + " --- |" * len(baselines)]
    for label, entry in speed["systems"].items():
        throughput = entry["throughput_sentences_per_second"]
        rows.append(f"| {label} | {entry['latency_ms']['median']} | "
                    + " | ".join(str(throughput[str(s)]) for s in sizes) + " | "
                    + "".join(f"{entry['speedup'][baseline]['latency']}x | " for baseline in baselines))
    machine = speed["machine"]
    rows.append("")
    rows.append(f"Measured on {machine['cpu']} with {machine['torch_threads']} torch threads, torch "
                f"{machine['torch']}, commit {machine['commit']}, {machine['date']}.")
    return rows


def local_path_leaks(text: str, paths: list[str | Path | None]) -> list[str]:
    """The machine-local forms of `paths` (absolute, resolved, or climbing out with `..`) that `text` contains; a
    path relative to the working directory (e.g. `run.output_dir: runs/x` in the config) is no leak."""
    leaks = []
    for path in paths:
        if path is None or not is_local_path(str(path)):
            continue
        for form in (str(path), str(Path(path).resolve())):
            machine_local = form.startswith(("/", "~")) or ".." in Path(form).parts
            if machine_local and form in text:
                leaks.append(form)
    return leaks


def select_systems(speed: dict | None, quality: dict | None, labels: list[str]) -> tuple[dict | None, dict | None]:
    """The two bench JSONs with only the systems named in `labels` (the speed JSON also keeps its baselines).
    Raises ValueError naming any label that neither JSON has."""
    known = set((speed or {}).get("systems", {})) | set((quality or {}).get("systems", {}))
    unknown = [label for label in labels if label not in known]
    if unknown:
        raise ValueError(f"--systems names {unknown}, which the speed and quality JSONs do not have (they have "
                         f"{sorted(known)})")

    def keep(report: dict | None, extra: list[str]) -> dict | None:
        if report is None:
            return None
        wanted = set(labels) | set(extra)
        return {**report, "systems": {label: entry for label, entry in report["systems"].items() if label in wanted}}

    return keep(speed, (speed or {}).get("baselines", [])), keep(quality, [])


def write_card(model_dir: Path, repo_id: str | None = None, results_path: Path | None = None,
               speed_path: Path | None = None, quality_path: Path | None = None, license: str = "apache-2.0",
               copy_to: Path | None = None, data_name: str | None = None, distilled_by: str | None = None,
               distill_beams: int | None = None, teacher_name: str | None = None, teacher_data: str | None = None,
               systems: list[str] | None = None, note: str | None = None):
    """Write `model_dir/README.md` (and the same card to `copy_to`, e.g. under `model_cards/`); return the
    `ModelCard`. `data_name` names the training data publicly when `DATASETS` does not recognise it;
    `distilled_by`/`distill_beams` say the targets are a teacher's beam-search outputs when the data directory has
    no `distill_report.json`; `teacher_name`/`teacher_data` name the teacher and its data when its directory does
    not say; `systems` keeps only those labels of the speed and quality JSONs (and the speed JSON's baselines, which
    its speed-ups refer to); `note` ends the Training section with what the results alone do not say (e.g. that
    the run is a part of a longer recipe). Raises ValueError if a local path would reach the card, or for a label
    in neither JSON."""
    from huggingface_hub import ModelCard, ModelCardData

    check_public_name(data_name, "--data-name")
    check_public_name(teacher_name, "--teacher-name")
    check_public_name(teacher_data, "--teacher-data")
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    generation = json.loads((model_dir / "generation_config.json").read_text())
    train_config = yaml.safe_load((model_dir / "train_config.yaml").read_text()) \
        if (model_dir / "train_config.yaml").is_file() else None
    if results_path is None and (model_dir.parent / "results.json").is_file():
        results_path = model_dir.parent / "results.json"
    results, speed, quality = load_json(results_path), load_json(speed_path), load_json(quality_path)
    if systems is not None:
        speed, quality = select_systems(speed, quality, systems)
    data = (train_config or {}).get("data", {})
    model_section = (train_config or {}).get("model", {})
    source_lang, target_lang = data.get("source_lang", "en"), data.get("target_lang", "de")
    info = identify_data(data, data_name) if train_config else DataInfo(None, "not recorded", False)
    distillation = find_distillation(data, distilled_by, distill_beams) if train_config else None
    init_from_ar = model_section.get("init_from_ar")
    teacher = distillation.teacher if distillation else None
    direction = f"{source_lang}→{target_lang}"
    teacher_text = describe_model(teacher, teacher_name, teacher_data, direction) if teacher else None
    ar_init_text = None
    if init_from_ar and not same_model(init_from_ar, teacher):  # named as the teacher only if there is none
        ar_init_text = describe_model(init_from_ar, None if teacher else teacher_name,
                                      None if teacher else teacher_data, direction)
    roles = {reference: role for reference, role in ((init_from_ar, "the AR initialisation"),
                                                     (teacher, "the teacher")) if reference}
    rows, evals = quality_rows(results, quality, model_dir, info, roles)
    card_data = ModelCardData(
        language=[source_lang, target_lang], license=license, library_name="transformers",
        pipeline_tag="translation", tags=["translation", "non-autoregressive", "nat-hf", config["objective"]],
        datasets=[info.hub_id] if info.hub_id else None, model_name=repo_id or model_dir.name,
        eval_results=evals or None,
    )
    parameters = count_parameters(model_dir)
    ar_hint = "<teacher dir>" if teacher and same_model(init_from_ar, teacher) else "<AR model dir>"
    found = placeholders(train_config, info, ar_hint) if train_config else []
    sources = ", ".join(f"`{Path(p).name}`" for p in (results_path, speed_path, quality_path) if p) or "none"
    defaults = default_decoding(config, generation)
    card = ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), model_name=repo_id or model_dir.name,
        repo_id=repo_id or "<Hub id or directory of this model>", source_lang=source_lang, target_lang=target_lang,
        objective=config["objective"], example="A man is riding a bike." if source_lang == "en" else "...",
        method=describe_objective(config["objective"]),
        decoding_options=", ".join(f"`{name}`" for name in defaults) or "no decoding options of its own",
        decoding_defaults=", ".join(f"`{name}={value}`" for name, value in defaults.items()) or "none",
        parameters=f"{parameters / 1e6:.1f}M" if parameters is not None else "not recorded",
        d_model=config["d_model"], encoder_layers=config["encoder_layers"], decoder_layers=config["decoder_layers"],
        heads=config["encoder_attention_heads"], ffn_dim=config["encoder_ffn_dim"], vocab_size=config["vocab_size"],
        data=data_section(data, info, distillation) if train_config else "Not recorded.",
        training=training_section(train_config, results, distillation, teacher_text, ar_init_text, config)
        + (f"\n\nNote: {note}" if note else ""),
        reproduce=reproduce_section(train_config, info, distillation, found),
        quality_table="\n".join(rows), speed_table="\n".join(speed_rows(speed)), sources=sources,
    )
    config_paths = [value for section in (train_config or {}).values() for value in (section or {}).values()
                    if isinstance(value, str)]
    quality_models = [entry["model"] for entry in (quality or {}).get("systems", {}).values()]
    leaks = local_path_leaks(card.content, [model_dir, results_path, speed_path, quality_path, teacher,
                                            *config_paths, *quality_models])
    if leaks:
        raise ValueError(f"the card would name local paths {sorted(set(leaks))}; describe them publicly "
                         "(--data-name, --teacher-name, DATASETS)")
    card.save(model_dir / "README.md")
    if copy_to is not None:
        card.save(copy_to)
    return card


def stage_upload(model_dir: Path, staging: Path) -> list[str]:
    """Copy what an upload sends into `staging` (the model directory as saved, its `train_config.yaml` with
    placeholders for local paths) and return the file list; raise if a file a Hub user needs is missing."""
    model_dir = Path(model_dir)
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{model_dir} lacks {missing}" + (" (run `nat-hf card` first)"
                                                                   if "README.md" in missing else ""))
    shutil.copytree(model_dir, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.staging"))
    if (staging / "train_config.yaml").is_file():
        train_config = yaml.safe_load((staging / "train_config.yaml").read_text())
        found = placeholders(train_config, identify_data(train_config.get("data", {})))
        (staging / "train_config.yaml").write_text(yaml.safe_dump(with_placeholders(train_config, found),
                                                                  sort_keys=False))
    return sorted(str(path.relative_to(staging)) for path in staging.rglob("*") if path.is_file())


def push(model_dir: Path, repo_id: str, dry_run: bool = False, private: bool = False) -> list[str]:
    """Upload a saved model directory (weights, config, generation config, tokenizer, card, remote code) to
    `repo_id` in one commit; with `dry_run`, only list what would be uploaded."""
    with tempfile.TemporaryDirectory() as staging:
        files = stage_upload(model_dir, Path(staging))
        if not dry_run:
            from huggingface_hub import HfApi

            api = HfApi()
            api.create_repo(repo_id, exist_ok=True, private=private)
            api.upload_folder(folder_path=staging, repo_id=repo_id, commit_message="Upload NAT model (nat-hf)")
    return files


def main_card(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nat-hf card", description="write MODEL_DIR/README.md from results")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--repo-id", help="the Hub name the card should use")
    parser.add_argument("--results", type=Path, help="training results.json (default: next to MODEL_DIR)")
    parser.add_argument("--speed", type=Path, help="nat-hf bench speed JSON")
    parser.add_argument("--quality", type=Path, help="nat-hf bench quality JSON")
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument("--copy-to", type=Path, help="also write the card here (e.g. model_cards/NAME.md)")
    parser.add_argument("--data-name", help="public name (Hub dataset id) of the training data, when nat_hf.hub."
                                            "DATASETS does not recognise its directory")
    parser.add_argument("--distilled-by", help="the teacher (directory or Hub id) whose outputs are the training "
                                               "targets, when the data directory has no distill_report.json")
    parser.add_argument("--distill-beams", type=int, help="the beam size of that distillation")
    parser.add_argument("--teacher-name", help="a public name for the teacher / AR initialisation (default: "
                                               "its Hub id, or only its description for a local directory)")
    parser.add_argument("--teacher-data", help="the teacher's training data (Hub dataset id), when its directory "
                                               "has no train_config.yaml saying it")
    parser.add_argument("--systems", help="comma-separated labels of the speed/quality JSONs to show (default: "
                                          "all); the speed JSON's baselines are always kept")
    parser.add_argument("--note", help="what the results alone do not say (e.g. the run is part of a longer "
                                       "recipe), at the end of the Training section")
    args = parser.parse_args(argv)
    if not (args.model_dir / "config.json").is_file():
        parser.error(f"{args.model_dir} is not a saved model directory (no config.json)")
    try:
        write_card(args.model_dir, args.repo_id, args.results, args.speed, args.quality, args.license, args.copy_to,
                   args.data_name, args.distilled_by, args.distill_beams, args.teacher_name, args.teacher_data,
                   args.systems.split(",") if args.systems else None, args.note)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    print(args.model_dir / "README.md")


def main_push(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nat-hf push", description="upload MODEL_DIR to the Hub")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("repo_id")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    if not args.model_dir.is_dir():
        parser.error(f"model directory {args.model_dir} not found")
    try:
        files = push(args.model_dir, args.repo_id, args.dry_run, args.private)
    except FileNotFoundError as error:
        parser.error(str(error))
    print(("would upload" if args.dry_run else "uploaded") + f" to {args.repo_id}:")
    for name in files:
        print(f"  {name}")
