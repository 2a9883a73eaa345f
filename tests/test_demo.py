from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from nat_hf.demo import ENGLISH, GERMAN, main, make_sentences


def test_toy_sentences_are_translated_and_sorted():
    for source, target in make_sentences(20, seed=0):
        numbers = sorted(ENGLISH.index(word) for word in source.split())
        assert target.split() == [GERMAN[n] for n in numbers]


def test_demo_trains_saves_and_reloads_a_translator(tmp_path, capsys):
    exact = main(["--steps", "30", "--output-dir", str(tmp_path), "--threads", "1"])
    printed = capsys.readouterr().out
    assert f"num_iterations=4: exact match {exact:.1%} on 200 held-out sentences" in printed
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert model.generation_config.num_iterations == 4
    # the returned score is the saved model's on the demo's held-out sentences (seed 0 + 2), decoded with the
    # generation config it was saved with
    held_out = make_sentences(200, seed=2)
    output = model.generate(**tokenizer([source for source, _ in held_out], return_tensors="pt", padding=True))
    decoded = tokenizer.batch_decode(output, skip_special_tokens=True)
    assert sum(hyp == ref for hyp, (_, ref) in zip(decoded, held_out, strict=True)) / 200 == exact
    batch = tokenizer(["three one two"], return_tensors="pt")
    (translation,) = tokenizer.batch_decode(model.generate(**batch), skip_special_tokens=True)
    assert isinstance(translation, str) and translation.strip()
