from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from nat_hf.demo import ENGLISH, GERMAN, main, make_sentences


def test_toy_sentences_are_translated_and_sorted():
    for source, target in make_sentences(20, seed=0):
        numbers = sorted(ENGLISH.index(word) for word in source.split())
        assert target.split() == [GERMAN[n] for n in numbers]


def test_demo_trains_saves_and_reloads_a_translator(tmp_path, capsys):
    exact = main(["--steps", "30", "--output-dir", str(tmp_path), "--threads", "1"])
    assert 0.0 <= exact <= 1.0
    printed = capsys.readouterr().out
    assert "exact match" in printed
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert model.generation_config.num_iterations == 4
    batch = tokenizer(["three one two"], return_tensors="pt")
    (translation,) = tokenizer.batch_decode(model.generate(**batch), skip_special_tokens=True)
    assert isinstance(translation, str) and translation.strip()
