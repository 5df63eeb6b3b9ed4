"""`build` from local folders of every supported LLM family and encoder; the output stands on its own."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from llavatune.build import BuildConfig, main
from llavatune.config import read_run_config

PAIRS = [("llama", "clip"), ("qwen2", "siglip"), ("mistral", "clip"), ("phi3", "siglip"), ("gemma", "clip"),
         ("llama", "clip-dual")]


def build_from(parts, tmp_path, llm, vision, **kw):
    return main(BuildConfig(out=tmp_path / f"{llm}-{vision}", llm=str(parts / f"llm-{llm}"),
                            vision=str(parts / f"vision-{vision}"), **kw))


@pytest.mark.parametrize("llm,vision", PAIRS)
def test_build_loads_and_generates(tiny_parts_dir, tmp_path, rgb_image, llm, vision):
    out = build_from(tiny_parts_dir, tmp_path, llm, vision)
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}],
        add_generation_prompt=True)
    inputs = processor(images=rgb_image, text=prompt, return_tensors="pt")

    # The processor expands <image> to exactly as many tokens as the tower yields features.
    n_placeholders = int((inputs["input_ids"] == model.config.image_token_id).sum())
    with torch.no_grad():
        feats = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    assert n_placeholders == feats[0].shape[0] == model.config.image_seq_length
    assert n_placeholders == 16  # (32 / 8)^2 patches: CLIP's CLS is dropped, SigLIP has none

    out_ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out_ids.shape[1] == inputs["input_ids"].shape[1] + 4


def test_build_weights_come_from_the_parts(tiny_parts_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = build_from(tiny_parts_dir, tmp_path, "llama", "clip")
    model = LlavaForConditionalGeneration.from_pretrained(out)
    llm = AutoModelForCausalLM.from_pretrained(tiny_parts_dir / "llm-llama")
    layer = "layers.0.self_attn.q_proj.weight"
    assert torch.equal(model.model.language_model.get_parameter(layer), llm.model.get_parameter(layer))
    old_rows = llm.get_input_embeddings().weight
    new_rows = model.get_input_embeddings().weight
    assert torch.equal(new_rows[: old_rows.shape[0]], old_rows)
    # <image> and <pad> rows start at the mean of the old rows
    assert torch.allclose(new_rows[old_rows.shape[0]:], old_rows.mean(0).expand(2, -1))


def test_siglip_keeps_every_patch_and_clip_drops_cls(tiny_parts_dir, tmp_path):
    clip = LlavaForConditionalGeneration.from_pretrained(build_from(tiny_parts_dir, tmp_path, "llama", "clip"))
    siglip = LlavaForConditionalGeneration.from_pretrained(build_from(tiny_parts_dir, tmp_path, "qwen2", "siglip"))
    assert clip.config.vision_feature_select_strategy == "default"
    assert siglip.config.vision_feature_select_strategy == "full"


def test_processor_normalises_as_the_encoder_was_trained(tiny_parts_dir, tmp_path):
    """Mean and std come from the encoder's preprocessor_config.json (read as a file: transformers 5.17's
    AutoImageProcessor needs torchvision), else the family's default (OpenAI CLIP's for CLIP)."""
    import json

    vision = tmp_path / "vision-own-stats"
    shutil.copytree(tiny_parts_dir / "vision-siglip", vision)
    (vision / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "SiglipImageProcessor", "image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}))
    own = main(BuildConfig(out=tmp_path / "own", llm=str(tiny_parts_dir / "llm-llama"), vision=str(vision)))
    clip = build_from(tiny_parts_dir, tmp_path, "llama", "clip")
    own, clip = AutoProcessor.from_pretrained(own).image_processor, AutoProcessor.from_pretrained(clip).image_processor
    assert (list(own.image_mean), list(own.image_std)) == ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    assert list(clip.image_mean) == pytest.approx([0.4815, 0.4578, 0.4082], abs=1e-4)


def test_projector_options(tiny_parts_dir, tmp_path, rgb_image):
    out = build_from(tiny_parts_dir, tmp_path, "llama", "clip", projector="linear")
    model = LlavaForConditionalGeneration.from_pretrained(out)
    proj = model.model.multi_modal_projector
    x = torch.randn(3, proj.linear_1.in_features)
    # 'linear' is one affine map: linear_2 is the identity and the activation is too
    assert torch.allclose(proj(x), proj.linear_1(x), atol=1e-6)


def test_pad_aspect_pads_with_the_mean_colour(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    assert processor.image_processor.do_pad is True


def test_output_needs_nothing_outside_itself(tiny_parts_dir, tmp_path):
    """Copy the parts, build from the copies, delete them, move the output, and load it in a process that
    never imports llavatune."""
    parts = tmp_path / "parts"
    shutil.copytree(tiny_parts_dir / "llm-qwen2", parts / "llm")
    shutil.copytree(tiny_parts_dir / "vision-siglip", parts / "vision")
    built = main(BuildConfig(out=tmp_path / "built", llm=str(parts / "llm"), vision=str(parts / "vision")))
    moved = tmp_path / "elsewhere" / "model"
    shutil.move(str(built), moved)
    shutil.rmtree(parts)
    for file in moved.iterdir():  # run_config.yaml records the sources on purpose; loading never reads it
        if file.suffix in (".json", ".jinja"):
            assert str(parts) not in file.read_text(), f"{file.name} refers to the deleted source folder"
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from PIL import Image
        from transformers import AutoProcessor, LlavaForConditionalGeneration
        model = LlavaForConditionalGeneration.from_pretrained({str(moved)!r})
        processor = AutoProcessor.from_pretrained({str(moved)!r})
        image = Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8))
        inputs = processor(images=image, text="<image>\\nWhat is this?", return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert "llavatune" not in sys.modules
        print("generated", out.shape[1] - inputs["input_ids"].shape[1])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "generated 3" in result.stdout


def test_run_config_records_the_build(tiny_model_dir):
    run = read_run_config(tiny_model_dir)
    assert run["verb"] == "build"
    assert run["config"]["preset"] == "tiny"
    assert run["model"] == {"template": "vicuna_v1", "image_tokens": 16}
    assert run["versions"]["transformers"] >= "5"


@pytest.mark.parametrize("family, template", [("llama", "internlm2_chat"), ("qwen2", "hf")])
def test_shape_preset_builds_the_published_architecture(tmp_path, monkeypatch, family, template):
    """`--preset <shape>`: the shape's LLM and vision configs with random weights, its vocabulary kept, the tiny
    tokenizer of its family, the published model's template; a shrunken shape stands in for the published ones
    (same code path, seconds)."""
    from transformers import CLIPVisionConfig, LlamaConfig, Qwen2Config

    from llavatune.model import shapes

    text = (LlamaConfig if family == "llama" else Qwen2Config)(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=5000)
    monkeypatch.setitem(shapes.LLM, "test/llm", lambda: text)
    monkeypatch.setitem(shapes.VISION, "test/vision", lambda: CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28,
        patch_size=14))
    monkeypatch.setitem(shapes.SHAPES, "test-shape", ("test/llm", "test/vision"))
    monkeypatch.setitem(shapes.TEMPLATES, "test/llm", template)
    out = main(BuildConfig(out=tmp_path / "m", preset="test-shape", dtype="bfloat16"))
    model = LlavaForConditionalGeneration.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert model.config.text_config.model_type == family and model.config.text_config.vocab_size == 5000
    assert model.config.text_config.num_key_value_heads == 2 and model.config.image_seq_length == 4
    assert model.dtype == torch.bfloat16
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>") < 5000
    assert ("<|im_start|>" in processor.tokenizer.get_vocab()) == (family == "qwen2")
    assert read_run_config(out)["model"]["template"] == template
    prompt = processor.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert prompt.startswith("<|im_start|>")  # ChatML: InternLM2's (as xtuner writes it) and Qwen's
    with pytest.raises(Exception, match="unknown preset 'nope'.*test-shape"):
        main(BuildConfig(out=tmp_path / "n", preset="nope"))


def test_device_makes_a_presets_weights_where_asked(tmp_path, monkeypatch):
    """`--device cuda` makes a big preset's random weights on the GPU (seconds where the CPU takes minutes): the
    build runs with that default device (here the meta device stands in for a GPU); asked for on a machine
    without CUDA it says so before any work. Loaded parts are read where they are: --device is refused with
    --llm/--vision."""
    from llavatune import build
    from llavatune.errors import LlavatuneError

    monkeypatch.setattr(build, "_build", lambda cfg: torch.empty(1).device)
    assert main(BuildConfig(out=tmp_path / "m", preset="tiny", device="meta")).type == "meta"
    assert main(BuildConfig(out=tmp_path / "c", preset="tiny")).type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(LlavatuneError, match="--device cuda: no CUDA GPU here"):
            main(BuildConfig(out=tmp_path / "gpu", preset="tiny", device="cuda"))
    with pytest.raises(ValueError, match="--device makes a preset's random weights"):
        BuildConfig(out=tmp_path / "x", llm="a", vision="b", device="cuda")
