from conftest import train_config
from llavatune.model.meta import load_text_side
from llavatune.train import main as train


def test_a_run_and_its_adapter_give_the_text_side_of_the_checkpoint(tiny_model_dir, shapes_data, tmp_path):
    """Data tools (`--model` of data validate / preview / stats) take a run as they take a model folder: the
    adapter's own tokenizer and template, with the base's image tokens."""
    run = tmp_path / "run"
    train(train_config(tiny_model_dir, shapes_data, run, "steps=1", "save_every=0", "template=plain"))
    base, trained = load_text_side(tiny_model_dir), load_text_side(run)
    assert (trained.image_token_id, trained.image_seq_length) == (base.image_token_id, base.image_seq_length)
    assert trained.tokenizer.get_vocab() == base.tokenizer.get_vocab()
    assert (base.template.name, trained.template.name) == ("vicuna_v1", "plain")  # what the run trained with
