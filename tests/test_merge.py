"""Merging folds the adapter in, checks the result against the adapter, and writes nothing when they differ."""

from __future__ import annotations

import re

import pytest

from llavatune.errors import LlavatuneError
from llavatune.merge import MergeConfig, main


def test_a_merge_that_loses_the_adapter_stops_before_writing(demo_run, tmp_path, monkeypatch, capsys):
    """The merged model is checked on a probe (a noise image through the tower and the projector, a short text
    through the language model): the demo's LoRA run folds in within 1e-4 of the largest value in float32 (measured
    ~1e-6). A merge that drops what was trained (here peft's unload: the adapter taken off, not folded in) is an
    error, and the output folder is not made."""
    import peft

    run = demo_run[0] / "runs" / "lora"
    main(MergeConfig(run=run, out=tmp_path / "merged"))
    said = re.search(r"largest difference (\S+) of the largest value", capsys.readouterr().err)
    assert said and float(said.group(1)) < 1e-4 and (tmp_path / "merged" / "config.json").exists()
    monkeypatch.setattr(peft.LoraModel, "merge_and_unload", lambda lora, *args, **kwargs: lora.unload())
    with pytest.raises(LlavatuneError, match=r"changed the model: the (image features|logits) of a fixed probe differ "
                                             r"by \S+ of their largest value .* nothing was written"):
        main(MergeConfig(run=run, out=tmp_path / "lost"))
    assert not (tmp_path / "lost").exists()


def test_a_run_whose_base_has_moved_merges_with_base(demo_run, tmp_path):
    """A run copied from the cluster names a base folder that is not on this machine: said, with the way out
    (--base), and the merge into the base where it is now equals the merge of the run where it was made."""
    import shutil

    import yaml
    from safetensors.torch import load_file

    run = demo_run[0] / "runs" / "lora"
    main(MergeConfig(run=run, out=tmp_path / "here"))
    copied = shutil.copytree(run / "final", tmp_path / "copied")
    config = yaml.safe_load((copied / "run_config.yaml").read_text())
    base = config["model"]["base"]
    config["model"]["base"] = "/cluster/models/tiny"
    (copied / "run_config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(LlavatuneError, match=r"its base model '/cluster/models/tiny' is not there; .* Name where it is "
                                             r"now \(`llavatune merge RUN --base DIR`"):
        main(MergeConfig(run=copied, out=tmp_path / "no"))
    main(MergeConfig(run=copied, out=tmp_path / "moved", base=base))
    here, moved = (load_file(tmp_path / name / "model.safetensors") for name in ("here", "moved"))
    assert here.keys() == moved.keys() and all((here[k] == moved[k]).all() for k in here)
    assert yaml.safe_load((tmp_path / "moved" / "run_config.yaml").read_text())["model"]["base"] == base
