import json
import shutil

from llavatune.info import InfoConfig, main


def test_info_counts_parameters_per_component(tiny_model_dir):
    from transformers import LlavaForConditionalGeneration

    info = main(InfoConfig(model=tiny_model_dir, json=True))
    model = LlavaForConditionalGeneration.from_pretrained(tiny_model_dir)
    params = info["parameters"]
    assert params["total"] == sum(p.numel() for p in model.parameters())
    assert params["projector"] == sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    assert params["vision"] == sum(p.numel() for p in model.model.vision_tower.parameters())
    assert info["image_tokens"] == 16 and info["template"] == "vicuna_v1" and info["llm"] == "llama"
    assert "model.safetensors" in info["files"]


def test_info_describes_a_run_by_its_checkpoint_and_an_adapter_with_its_base(tiny_model_dir, shapes_data, tmp_path):
    from conftest import train_config
    from llavatune.train import main as train

    base, run = tmp_path / "base", tmp_path / "run"
    shutil.copytree(tiny_model_dir, base)
    train(train_config(base, shapes_data, run, "steps=2", "save_every=0", "lora.r=4", "lora.targets=[q_proj,v_proj]"))
    info = main(InfoConfig(model=run, json=True))
    assert info["path"] == str(run / "final") and info["base"] == str(base)
    assert info["parameters"] == main(InfoConfig(model=tiny_model_dir, json=True))["parameters"]
    adapter = info["adapter"]
    assert (adapter["type"], adapter["r"], adapter["step"]) == ("LORA", 4, 2)
    assert adapter["targets"] == "q_proj, v_proj (4 modules)"  # the tiny LLM has 2 layers
    text = json.loads((tiny_model_dir / "config.json").read_text())["text_config"]
    width, kv = text["hidden_size"], text["num_key_value_heads"] * text["head_dim"]
    lora = text["num_hidden_layers"] * 4 * ((width + width) + (width + kv))  # r x (in + out) of q_proj and v_proj
    assert adapter["parameters"] == {"total": lora + info["parameters"]["projector"], "adapters": lora,
                                     "projector": info["parameters"]["projector"]}
    assert "adapter_model.safetensors" in info["files"] and info["template"] == "vicuna_v1"

    shutil.rmtree(base)  # the base gone (a run copied to another machine): the adapter still reads
    alone = main(InfoConfig(model=run, json=True))
    assert alone["base"] == f"{base} (not found here)" and alone["adapter"] == adapter
    assert "parameters" not in alone and alone["template"] == "vicuna_v1"
