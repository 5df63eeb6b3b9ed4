"""Original LLaVA <-> llava-hf: the converted model gives the logits of a reference forward written here from
the original recipe (CLIP hidden_states[-2], drop CLS, projector, features spliced at the image position, Llama
forward), for linear and mlp2x_gelu projectors, with and without pad; projector-only inputs; round trips."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import (AutoModelForCausalLM, AutoProcessor, CLIPVisionModel, LlamaForCausalLM,
                          LlavaForConditionalGeneration)

from llavatune.convert import ConvertConfig, detect, main
from llavatune.errors import LlavatuneError

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


def projector_weights(kind, vision_hidden=32, hidden=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    if kind == "linear":
        return {"model.mm_projector.weight": torch.randn(hidden, vision_hidden, generator=g) * 0.2,
                "model.mm_projector.bias": torch.randn(hidden, generator=g) * 0.1}
    return {"model.mm_projector.0.weight": torch.randn(hidden, vision_hidden, generator=g) * 0.2,
            "model.mm_projector.0.bias": torch.randn(hidden, generator=g) * 0.1,
            "model.mm_projector.2.weight": torch.randn(hidden, hidden, generator=g) * 0.2,
            "model.mm_projector.2.bias": torch.randn(hidden, generator=g) * 0.1}


def write_original(folder, parts, kind, aspect, shards=False, family="llama"):
    """A tiny original-format checkpoint: LLM weights + mm_projector, the tower named by mm_vision_tower."""
    folder.mkdir()
    llm_dir, clip_dir = parts / f"llm-{family}", parts / "vision-clip"
    llm = AutoModelForCausalLM.from_pretrained(llm_dir)
    weights = {**{k: v.clone() for k, v in llm.state_dict().items()}, **projector_weights(kind)}
    arch = {"llama": "LlavaLlamaForCausalLM", "mistral": "LlavaMistralForCausalLM"}[family]
    config = {**json.loads((llm_dir / "config.json").read_text()), "architectures": [arch],
              "model_type": f"llava_{family}", "mm_vision_tower": str(clip_dir), "mm_hidden_size": 32,
              "mm_projector_type": kind, "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
              "image_aspect_ratio": aspect, "mm_use_im_start_end": False, "mm_use_im_patch_token": False}
    (folder / "config.json").write_text(json.dumps(config))
    if shards:  # pytorch_model-0000N-of-00002.bin with an index, as the original repo saves
        names = sorted(weights)
        halves = [names[: len(names) // 2], names[len(names) // 2:]]
        index = {}
        for i, half in enumerate(halves, 1):
            shard = f"pytorch_model-0000{i}-of-00002.bin"
            torch.save({k: weights[k] for k in half}, folder / shard)
            index.update({k: shard for k in half})
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": index}))
    else:
        save_file(weights, folder / "model.safetensors")
    for f in llm_dir.glob("tokenizer*"):
        shutil.copy(f, folder / f.name)
    return folder, weights


def reference_pixels(image: Image.Image, pad: bool, size=32) -> torch.Tensor:
    """LLaVA: expand2square with the mean colour (when pad), then CLIP's resize + centre crop + normalise."""
    if pad and image.width != image.height:
        side = max(image.size)
        square = Image.new("RGB", (side, side), tuple(int(x * 255) for x in MEAN))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        image = square
    image = image.resize((size, size), Image.BICUBIC)
    arr = (np.asarray(image, dtype=np.float64) / 255.0 - MEAN) / STD
    return torch.tensor(arr.transpose(2, 0, 1), dtype=torch.float32)[None]


def reference_logits(weights, parts, kind, pixels, before, after, tower=None, family="llama"):
    llm = AutoModelForCausalLM.from_pretrained(parts / f"llm-{family}").eval()
    llm.load_state_dict({k: v for k, v in weights.items() if "mm_projector" not in k})
    tower = (tower or CLIPVisionModel.from_pretrained(parts / "vision-clip")).eval()
    feats = tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]  # drop CLS
    if kind == "linear":
        proj = torch.nn.Linear(32, 64)
        proj.load_state_dict({"weight": weights["model.mm_projector.weight"], "bias": weights["model.mm_projector.bias"]})
    else:
        proj = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 64))
        proj.load_state_dict({k.removeprefix("model.mm_projector."): v for k, v in weights.items() if "mm_projector" in k})
    embed = llm.get_input_embeddings()
    embeds = torch.cat([embed(torch.tensor(before)), proj(feats)[0], embed(torch.tensor(after))])
    return llm(inputs_embeds=embeds[None]).logits


@pytest.mark.parametrize("kind,aspect,shards,family", [
    ("mlp2x_gelu", "pad", False, "llama"), ("linear", "pad", True, "llama"), ("mlp2x_gelu", "square", False, "llama"),
    ("linear", "square", False, "llama"), ("mlp2x_gelu", "pad", False, "mistral")])
def test_converted_logits_match_the_original_recipe(tiny_parts_dir, tmp_path, kind, aspect, shards, family):
    src, weights = write_original(tmp_path / "orig", tiny_parts_dir, kind, aspect, shards, family)
    assert detect(src) == "llava"
    out = main(ConvertConfig(src=src, dst=tmp_path / "hf"))
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8))
    if aspect == "square":
        image = image.resize((40, 40))
    pixels = reference_pixels(image, pad=aspect == "pad")
    assert torch.allclose(processor.image_processor(image, return_tensors="pt")["pixel_values"], pixels, atol=1e-5)
    tok = processor.tokenizer
    before = [tok.bos_token_id, *tok("USER: ", add_special_tokens=False).input_ids]
    after = tok("\nWhat is it? ASSISTANT:", add_special_tokens=False).input_ids
    ids = torch.tensor([before + [model.config.image_token_id] * 16 + after])
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels).logits
        ref = reference_logits(weights, tiny_parts_dir, kind, pixels, before, after, family=family)
    vocab = ref.shape[-1]  # the converted model adds <image> and <pad> rows after the original vocabulary
    assert torch.allclose(ours[..., :vocab], ref, atol=1e-4)
    assert str(tiny_parts_dir) not in (out / "config.json").read_text()  # the tower now lives inside


def test_round_trip_hf_to_llava_to_hf_keeps_logits(tiny_parts_dir, tmp_path, rgb_image):
    src, _ = write_original(tmp_path / "orig", tiny_parts_dir, "mlp2x_gelu", "pad")
    first = main(ConvertConfig(src=src, dst=tmp_path / "hf1"))
    exported = main(ConvertConfig(src=first, dst=tmp_path / "orig2", to="llava"))
    config = json.loads((exported / "config.json").read_text())
    assert config["mm_vision_tower"] == "vision_tower" and (exported / "vision_tower" / "config.json").is_file()
    assert detect(exported) == "llava"
    second = main(ConvertConfig(src=exported, dst=tmp_path / "hf2"))
    inputs = AutoProcessor.from_pretrained(first)(images=rgb_image, text="<image>\nWhat is it?", return_tensors="pt")
    with torch.no_grad():
        a = LlavaForConditionalGeneration.from_pretrained(first).eval()(**inputs).logits
        b = LlavaForConditionalGeneration.from_pretrained(second).eval()(**inputs).logits
    assert torch.allclose(a, b, atol=1e-5)


def test_projector_only_checkpoint(tiny_parts_dir, tmp_path, rgb_image):
    projector = tmp_path / "mm_projector.bin"
    torch.save(projector_weights("mlp2x_gelu"), projector)
    assert detect(projector) == "llava-projector"
    out = main(ConvertConfig(src=projector, dst=tmp_path / "hf", model_base=str(tiny_parts_dir / "llm-llama"),
                             vision=str(tiny_parts_dir / "vision-clip")))
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    tok = AutoProcessor.from_pretrained(out).tokenizer
    pixels = reference_pixels(Image.new("RGB", (30, 30), (90, 30, 160)), pad=True)
    before, after = [tok.bos_token_id], tok("\nWhat?", add_special_tokens=False).input_ids
    ids = torch.tensor([before + [model.config.image_token_id] * 16 + after])
    base_weights = LlamaForCausalLM.from_pretrained(tiny_parts_dir / "llm-llama").state_dict()
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels).logits
        ref = reference_logits({**base_weights, **projector_weights("mlp2x_gelu")}, tiny_parts_dir, "mlp2x_gelu",
                               pixels, before, after)
    assert torch.allclose(ours[..., : ref.shape[-1]], ref, atol=1e-4)
    with pytest.raises(LlavatuneError, match="needs --model-base"):
        main(ConvertConfig(src=projector, dst=tmp_path / "x"))


def test_a_from_that_the_files_contradict_is_said(tiny_model_dir, tmp_path):
    with pytest.raises(LlavatuneError, match=r"is a llava-hf checkpoint \(--from hf\), not --from llava; leave"):
        main(ConvertConfig(src=tiny_model_dir, dst=tmp_path / "out", src_format="llava"))
    assert not (tmp_path / "out").exists()


def test_bad_inputs_name_the_file_and_shape(tiny_parts_dir, tmp_path):
    src, _ = write_original(tmp_path / "orig", tiny_parts_dir, "mlp2x_gelu", "pad", shards=True)
    (src / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(LlavatuneError, match="shard pytorch_model-00002-of-00002.bin listed in .* is missing"):
        main(ConvertConfig(src=src, dst=tmp_path / "a"))
    wrong = tmp_path / "wrong.bin"
    torch.save(projector_weights("mlp2x_gelu", vision_hidden=48), wrong)
    with pytest.raises(LlavatuneError, match=r"shape \(64, 48\); this LLM and encoder need \(64, 32\)"):
        main(ConvertConfig(src=wrong, dst=tmp_path / "b", model_base=str(tiny_parts_dir / "llm-llama"),
                           vision=str(tiny_parts_dir / "vision-clip")))
    gone, _ = write_original(tmp_path / "gone", tiny_parts_dir, "linear", "pad")
    config = json.loads((gone / "config.json").read_text())
    config["mm_vision_tower"] = "/nowhere/clip-vit"
    (gone / "config.json").write_text(json.dumps(config))
    with pytest.raises(LlavatuneError, match="override it with --vision"):
        main(ConvertConfig(src=gone, dst=tmp_path / "c"))


def write_lora_run(run, parts):
    """An original LLaVA LoRA run: config.json, adapter_config.json, adapter_model.bin (q/v LoRA, r 4, alpha 8)
    and non_lora_trainables.bin (the projector). Returns the merged LLM weights and the projector."""
    run.mkdir()
    base = parts / "llm-llama"
    llm = LlamaForCausalLM.from_pretrained(base)
    config = {**json.loads((base / "config.json").read_text()), "architectures": ["LlavaLlamaForCausalLM"],
              "mm_vision_tower": str(parts / "vision-clip"), "mm_projector_type": "mlp2x_gelu",
              "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "image_aspect_ratio": "pad"}
    (run / "config.json").write_text(json.dumps(config))
    (run / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "peft_type": "LORA",
                                                         "target_modules": ["q_proj", "v_proj"]}))
    g = torch.Generator().manual_seed(3)
    lora, merged = {}, {k: v.clone() for k, v in llm.state_dict().items()}
    for layer in range(2):
        for name, out_features in (("q_proj", 64), ("v_proj", 32)):
            module = f"model.layers.{layer}.self_attn.{name}"
            a, b = torch.randn(4, 64, generator=g) * 0.1, torch.randn(out_features, 4, generator=g) * 0.1
            lora[f"base_model.model.{module}.lora_A.weight"] = a
            lora[f"base_model.model.{module}.lora_B.weight"] = b
            merged[f"{module}.weight"] = merged[f"{module}.weight"] + 2.0 * b @ a
    torch.save(lora, run / "adapter_model.bin")
    projector = projector_weights("mlp2x_gelu")
    torch.save({f"base_model.model.{k}": v for k, v in projector.items()}, run / "non_lora_trainables.bin")
    return merged, projector


def test_lora_run_with_its_base(tiny_parts_dir, tmp_path):
    """adapter_model.bin + non_lora_trainables.bin + --model-base -> a merged llava-hf model."""
    run, base = tmp_path / "lora-run", tiny_parts_dir / "llm-llama"
    merged, projector = write_lora_run(run, tiny_parts_dir)
    assert detect(run) == "llava-lora"
    with pytest.raises(LlavatuneError, match="needs its base LLM, --model-base"):
        main(ConvertConfig(src=run, dst=tmp_path / "x"))
    out = main(ConvertConfig(src=run, dst=tmp_path / "hf", model_base=str(base)))
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    tok = AutoProcessor.from_pretrained(out).tokenizer
    pixels = reference_pixels(Image.new("RGB", (30, 20), (10, 120, 200)), pad=True)
    before, after = [tok.bos_token_id, *tok("USER: ", add_special_tokens=False).input_ids], tok(
        "\nWhat? ASSISTANT:", add_special_tokens=False).input_ids
    ids = torch.tensor([before + [model.config.image_token_id] * 16 + after])
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels).logits
        ref = reference_logits({**merged, **projector}, tiny_parts_dir, "mlp2x_gelu", pixels, before, after)
    assert torch.allclose(ours[..., : ref.shape[-1]], ref, atol=1e-4)

    # --keep-adapter: the base plus a PEFT adapter that gives the same logits once attached
    from llavatune.model import load as loadlib

    kept = main(ConvertConfig(src=run, dst=tmp_path / "kept", model_base=str(base), keep_adapter=True))
    attached, _ = loadlib.load(kept / "adapter")
    with torch.no_grad():
        via_adapter = attached(input_ids=ids, pixel_values=pixels).logits
    assert torch.allclose(via_adapter, ours, atol=1e-4)
    targets = json.loads((kept / "adapter" / "adapter_config.json").read_text())["target_modules"]
    assert targets and all(t.startswith("model.language_model.") for t in targets)


def test_xtuner_checkpoint_with_llm_and_vit_lora(tiny_parts_dir, tmp_path):
    """An xtuner LLaVA .pth: projector.model.{0,2}, LLM LoRA (llm.base_model.model.*) and ViT LoRA
    (visual_encoder.base_model.model.vision_model.*), folded with alpha / r."""
    base, clip = tiny_parts_dir / "llm-llama", tiny_parts_dir / "vision-clip"
    llm = LlamaForCausalLM.from_pretrained(base)
    tower = CLIPVisionModel.from_pretrained(clip)
    g = torch.Generator().manual_seed(5)
    state, llm_merged, vit_merged = {}, {k: v.clone() for k, v in llm.state_dict().items()}, {
        k: v.clone() for k, v in tower.state_dict().items()}
    r, alpha = 4, 16.0
    for layer in range(2):
        module = f"model.layers.{layer}.self_attn.q_proj"
        a, b = torch.randn(r, 64, generator=g) * 0.1, torch.randn(64, r, generator=g) * 0.1
        state[f"llm.base_model.model.{module}.lora_A.weight"] = a
        state[f"llm.base_model.model.{module}.lora_B.weight"] = b
        llm_merged[f"{module}.weight"] += alpha / r * b @ a
        vit = f"encoder.layers.{layer}.self_attn.v_proj"
        a, b = torch.randn(r, 32, generator=g) * 0.1, torch.randn(32, r, generator=g) * 0.1
        state[f"visual_encoder.base_model.model.vision_model.{vit}.lora_A.weight"] = a
        state[f"visual_encoder.base_model.model.vision_model.{vit}.lora_B.weight"] = b
        vit_merged[f"{vit}.weight"] += alpha / r * b @ a
    projector = projector_weights("mlp2x_gelu")
    state.update({k.replace("model.mm_projector.", "projector.model."): v for k, v in projector.items()})
    pth = tmp_path / "iter_100.pth"
    torch.save({"state_dict": state, "meta": {"iter": 100}}, pth)
    assert detect(pth) == "xtuner"
    legacy = tmp_path / "legacy.pth"  # torch's pre-zip format cannot be memory-mapped: read whole
    torch.save({"state_dict": state}, legacy, _use_new_zipfile_serialization=False)
    assert detect(legacy) == "xtuner"
    with pytest.raises(LlavatuneError, match="pass --lora-alpha"):
        main(ConvertConfig(src=pth, dst=tmp_path / "x", model_base=str(base), vision=str(clip)))
    out = main(ConvertConfig(src=pth, dst=tmp_path / "hf", model_base=str(base), vision=str(clip), lora_alpha=alpha))
    deepspeed = tmp_path / "iter_100_ds.pth"  # the DeepSpeed layout: a folder with the module states
    deepspeed.mkdir()
    torch.save({"module": state}, deepspeed / "mp_rank_00_model_states.pt")
    assert detect(deepspeed) == "xtuner"
    out_ds = main(ConvertConfig(src=deepspeed, dst=tmp_path / "hf-ds", model_base=str(base), vision=str(clip),
                                lora_alpha=alpha))
    a, b = (LlavaForConditionalGeneration.from_pretrained(o).state_dict() for o in (out, out_ds))
    assert all(torch.equal(a[k], b[k]) for k in a)
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    tok = AutoProcessor.from_pretrained(out).tokenizer
    pixels = reference_pixels(Image.new("RGB", (20, 30), (200, 120, 10)), pad=True)
    before, after = [tok.bos_token_id], tok("\nWhat?", add_special_tokens=False).input_ids
    ids = torch.tensor([before + [model.config.image_token_id] * 16 + after])
    tower.load_state_dict(vit_merged)
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels).logits
        ref = reference_logits({**llm_merged, **projector}, tiny_parts_dir, "mlp2x_gelu", pixels, before, after,
                               tower=tower)
    assert torch.allclose(ours[..., : ref.shape[-1]], ref, atol=1e-4)


def test_a_llavatune_run_exports_by_its_final_checkpoint(tiny_model_dir, shapes_data, tmp_path):
    """`convert RUN DST --to llava` takes the run's final checkpoint; a LoRA run's adapter is sent to merge."""
    from conftest import train_config
    from llavatune.train import main as train

    full, lora = tmp_path / "full", tmp_path / "lora"
    train(train_config(tiny_model_dir, shapes_data, full, "steps=1", "save_every=0", "method=full"))
    exported = main(ConvertConfig(src=full, dst=tmp_path / "orig", to="llava"))
    assert json.loads((exported / "config.json").read_text())["architectures"] == ["LlavaLlamaForCausalLM"]
    train(train_config(tiny_model_dir, shapes_data, lora, "steps=1", "save_every=0"))
    with pytest.raises(LlavatuneError, match=r"a LoRA adapter, not a whole model: merge it .*llavatune merge"):
        main(ConvertConfig(src=lora, dst=tmp_path / "orig2", to="llava"))
