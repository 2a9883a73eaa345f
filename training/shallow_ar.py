"""A shallower copy of an AR encoder-decoder, the starting point of a draft model for assisted generation:
`python training/shallow_ar.py TEACHER OUT --decoder-layers 1`.

Keeps the teacher's embeddings, encoder, output layer and its first `--decoder-layers` decoder layers (the
lower layers feed the rest, so they are the ones that make sense alone), and saves the model with the teacher's
tokenizer. Fine-tune it on the teacher's greedy outputs (training/configs/multi30k_ar_shallow_draft.yaml) so that
its drafts agree with the teacher."""

import argparse
import json
from pathlib import Path

from transformers import AutoModelForSeq2SeqLM, AutoTokenizer


def make_shallow(teacher: str, output: Path, decoder_layers: int) -> dict:
    model = AutoModelForSeq2SeqLM.from_pretrained(teacher)
    layers = model.model.decoder.layers
    if not 1 <= decoder_layers <= len(layers):
        raise ValueError(f"--decoder-layers must be in [1, {len(layers)}], got {decoder_layers}")
    before = model.num_parameters()
    model.model.decoder.layers = layers[:decoder_layers]
    model.config.decoder_layers = decoder_layers
    model.save_pretrained(output)
    AutoTokenizer.from_pretrained(teacher).save_pretrained(output)
    return {"teacher": teacher, "decoder_layers": decoder_layers, "parameters": model.num_parameters(),
            "teacher_parameters": before}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher", help="an AutoModelForSeq2SeqLM directory (e.g. a Marian model)")
    parser.add_argument("output", type=Path)
    parser.add_argument("--decoder-layers", type=int, default=1)
    args = parser.parse_args(argv)
    report = make_shallow(args.teacher, args.output, args.decoder_layers)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
