"""Hub ids load like folders, from a hub cache that the tests write (offline: HF_HUB_OFFLINE=1 in conftest), in the
layout huggingface_hub keeps: models--ORG--NAME/refs/main -> snapshots/<commit>/files."""

from __future__ import annotations

import shutil

import pytest
import yaml
from huggingface_hub import constants

from llavatune.errors import LlavatuneError
from llavatune.model import hub
from llavatune.model import load as loadlib

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """put(repo_id, folder): `folder` as that repo's main revision in a fresh cache."""
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    def put(repo_id: str, folder):
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(folder, repo / "snapshots" / COMMIT)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(COMMIT)
        return repo / "snapshots" / COMMIT

    return put


def test_what_is_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert hub.is_hub_id("llava-hf/llava-1.5-7b-hf") and hub.is_hub_id("Qwen/Qwen1.5-4B-Chat")
    assert not hub.is_hub_id("runs/tiny-lroa")  # runs/ is here: a mistyped path, not looked up on the network
    assert not hub.is_hub_id("/abs/path") and not hub.is_hub_id("a/b/c") and not hub.is_hub_id("./x/y")
    assert not hub.is_hub_id("tiny")


def test_a_hub_model_loads_and_its_adapter_finds_it_again(hub_cache, tiny_model_dir, shapes_data, tmp_path):
    """Scenario 1 trains on `model: llava-hf/llava-1.5-7b-hf`: the run records the hub id and the commit it
    trained on (not a cache path of this machine), and merge, info and chat find the base by them."""
    from conftest import train_config
    from llavatune.info import describe
    from llavatune.merge import MergeConfig
    from llavatune.merge import main as merge
    from llavatune.train import main as train

    snapshot = hub_cache("someone/tiny-llava", tiny_model_dir)
    assert loadlib.resolve("someone/tiny-llava") == snapshot
    final = train(train_config("someone/tiny-llava", shapes_data, tmp_path / "run", "method=lora", "steps=1",
                               "save_every=0"))
    recorded = yaml.safe_load((final / "run_config.yaml").read_text())["model"]
    assert (recorded["base"], recorded["base_revision"]) == ("someone/tiny-llava", COMMIT)
    assert loadlib.base_of(final) == snapshot
    assert describe(final)["base"] == "someone/tiny-llava" and describe(final)["parameters"]["llm"] > 0
    merged = merge(MergeConfig(run=tmp_path / "run", out=tmp_path / "merged"))
    assert (merged / "model.safetensors").is_file()


def test_an_original_llava_release_converts_from_its_hub_id(hub_cache, tiny_parts_dir, tmp_path):
    """liuhaotian/llava-v1.5-7b keeps pickled .bin shards and no safetensors: they are what is read."""
    from test_convert import write_original

    from llavatune.convert import ConvertConfig
    from llavatune.convert import main as convert

    folder, _ = write_original(tmp_path / "orig", tiny_parts_dir, "mlp2x_gelu", "pad", shards=True)
    hub_cache("someone/llava-orig", folder)
    out = convert(ConvertConfig(src="someone/llava-orig", dst=tmp_path / "hf"))
    assert (out / "config.json").is_file() and loadlib.load(out)[0].config.model_type == "llava"


def test_a_hub_id_that_is_not_there_says_so(hub_cache):
    with pytest.raises(LlavatuneError, match=r"someone/absent: no such folder here, and the Hugging Face hub did "
                                             r"not provide it \(.*\)\. Check the id"):
        loadlib.resolve("someone/absent")
