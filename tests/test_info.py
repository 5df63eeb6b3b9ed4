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
