"""Verb `convert`: original LLaVA checkpoints <-> llava-hf, verified by logits.

    llavatune convert llava-v1.5-7b models/llava15-7b-hf                       # --from auto detects the layout
    llavatune convert llava-v1.5-7b-lora models/merged --model-base lmsys/vicuna-7b-v1.5
    llavatune convert checkpoints/mm_projector.bin models/stage1 --from llava-projector --model-base vicuna --vision clip
    llavatune convert models/llava15-7b-hf exported/llava-v1.5-7b --to llava

The original layout (haotian-liu/LLaVA): a `LlavaLlamaForCausalLM` / `LlavaMistralForCausalLM` config with
mm_* fields, LLM keys as in the plain LLM, the projector as `model.mm_projector.{0,2}` (mlp2x_gelu) or
`model.mm_projector` (linear), and the vision tower not stored but named by `mm_vision_tower`. The kind is read
from the files (config `architectures`, key names), never from the folder name.
"""

from __future__ import annotations

import dataclasses
import json
import re
import zipfile
from pathlib import Path
from typing import Literal

import torch

from llavatune import progress
from llavatune.config import save_run_config
from llavatune.errors import LlavatuneError

console = progress.messages
KINDS = {"llava": "original LLaVA", "llava-lora": "original LLaVA LoRA", "llava-projector": "stage-1 projector",
         "xtuner": "xtuner", "hf": "llava-hf"}
ORIGINAL_ARCHS = {"LlavaLlamaForCausalLM": "llama", "LlavaMistralForCausalLM": "mistral"}
MM_KEYS = ("mm_", "image_aspect_ratio", "tune_mm", "freeze_mm", "unfreeze_mm", "image_grid_pinpoints",
           "tokenizer_padding_side", "tokenizer_model_max_length", "use_mm_proj")


@dataclasses.dataclass
class ConvertConfig:
    src: Path
    dst: Path
    src_format: Literal["auto", "llava", "llava-lora", "llava-projector", "xtuner", "hf"] = "auto"
    to: Literal["hf", "llava"] = "hf"
    model_base: str | None = None    # the LLM a LoRA or projector-only checkpoint was trained on
    vision: str | None = None        # overrides mm_vision_tower (a folder or hub id); the encoder of xtuner runs
    lora_alpha: float | None = None  # xtuner .pth files keep LoRA weights but not alpha: give the run's value
    keep_adapter: bool = False       # llava-lora: write the base + the adapter (in DST/adapter) instead of merging
    template: str = "vicuna_v1"      # LLaVA-1.5's
    overwrite: bool = False


def detect(src: Path) -> str:
    """'llava' (full original), 'llava-projector' (a lone mm_projector.bin) or 'hf' (llava-hf), from contents."""
    if src.is_file() or (src / "mp_rank_00_model_states.pt").is_file():
        keys = xtuner_state(src).keys() if src.suffix == ".pth" or src.is_dir() else _read_weights([src]).keys()
        if keys and all("mm_projector" in k for k in keys):
            return "llava-projector"
        if any(k.startswith("projector.model.") for k in keys):
            return "xtuner"
        raise LlavatuneError(f"{src}: a weights file that is neither a stage-1 mm_projector nor an xtuner LLaVA "
                             "checkpoint (no projector.model.* keys).")
    config_path = src / "config.json"
    if not config_path.is_file() and (src / "adapter_config.json").is_file():
        raise LlavatuneError(f"{src}: a LoRA adapter, not a whole model: merge it into its base first "
                             f"(llavatune merge {src} --out DIR), then convert DIR.")
    if not config_path.is_file():
        raise LlavatuneError(f"{src}: no config.json; expected a checkpoint folder.")
    config = json.loads(config_path.read_text())
    archs = config.get("architectures") or []
    if (src / "adapter_config.json").is_file() and (src / "non_lora_trainables.bin").is_file():
        return "llava-lora"
    if any(a in ORIGINAL_ARCHS for a in archs) or "mm_vision_tower" in config:
        return "llava"
    if "LlavaForConditionalGeneration" in archs or config.get("model_type") == "llava":
        return "hf"
    raise LlavatuneError(f"{src}: config.json names {archs or 'no architecture'}; expected an original LLaVA "
                         "(LlavaLlamaForCausalLM, LlavaMistralForCausalLM) or a llava-hf checkpoint.")


def main(cfg: ConvertConfig) -> Path:
    from llavatune import hub
    from llavatune.model.load import resolve

    if Path(cfg.src).is_dir() or hub.is_hub_id(cfg.src):  # a run: its final checkpoint; a hub id: its download
        cfg = dataclasses.replace(cfg, src=resolve(cfg.src))
    kind = _kind(Path(cfg.src), cfg.src_format)
    console.print(f"{cfg.src}: detected {kind}" if cfg.src_format == "auto" else f"{cfg.src}: {kind}")
    if cfg.to == "llava":
        if kind != "hf":
            raise LlavatuneError("--to llava converts a llava-hf checkpoint; convert to hf first.")
        return to_llava(cfg)
    if kind == "hf":
        raise LlavatuneError(f"{cfg.src} is already a llava-hf checkpoint.")
    if kind == "xtuner":
        return from_xtuner(cfg)
    return from_llava(cfg, kind)


def _kind(src: Path, given: str) -> str:
    """The format of SRC: detected, or --from when detection cannot tell; a --from that the files contradict is
    an error (an hf folder read as original LLaVA failed deep inside with an AttributeError)."""
    try:
        detected = detect(src)
    except LlavatuneError:
        if given == "auto":
            raise
        return given
    if given not in ("auto", detected):
        raise LlavatuneError(f"{src} is a {KINDS[detected]} checkpoint (--from {detected}), not --from {given}; "
                             "leave --from out to have it detected.")
    return detected


# --- original -> llava-hf ------------------------------------------------------------------------------

def weight_files(src: Path) -> list[Path]:
    """The shards an index lists (every one must exist), else the single weights file."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = src / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [s for s in shards if not (src / s).is_file()]
            if missing:
                raise LlavatuneError(f"{src}: shard {missing[0]} listed in {index_name} is missing.")
            return [src / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (src / name).is_file():
            return [src / name]
    raise LlavatuneError(f"{src}: no weights (model.safetensors, pytorch_model.bin or their sharded index).")


def _read_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            out.update(load_file(f) if f.suffix == ".safetensors" else torch.load(f, map_location="cpu",
                                                                                  weights_only=True))
        except Exception as err:  # a truncated or foreign file: say which
            raise LlavatuneError(f"{f}: cannot read the weights ({str(err).splitlines()[0][:120]}).") from None
    return out


def projector_spec(weights: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """(projector name, {linear_1/linear_2 weights}) from original mm_projector keys."""
    proj = {re.sub(r"^.*mm_projector\.", "", k): v for k, v in weights.items() if "mm_projector" in k}
    if set(proj) == {"weight", "bias"}:
        return "linear", {"linear_1.weight": proj["weight"], "linear_1.bias": proj["bias"]}
    layers = sorted({int(k.split(".")[0]) for k in proj})
    if layers == [0, 2]:
        return "mlp2x_gelu", {"linear_1.weight": proj["0.weight"], "linear_1.bias": proj["0.bias"],
                              "linear_2.weight": proj["2.weight"], "linear_2.bias": proj["2.bias"]}
    raise LlavatuneError(f"mm_projector keys {sorted(proj)} are neither a linear nor an mlp2x_gelu projector "
                         "(deeper MLPs do not fit the llava-hf format).")


def _llm_from_original(src: Path, config: dict, weights: dict[str, torch.Tensor]):
    """The LLM half: its keys are the plain LLM's, so it is written as an HF folder and loaded by transformers
    (which also rebuilds buffers such as rotary frequencies)."""
    import tempfile

    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    family = next((ORIGINAL_ARCHS[a] for a in config.get("architectures", []) if a in ORIGINAL_ARCHS), "llama")
    text = {k: v for k, v in config.items() if not k.startswith(MM_KEYS) and k not in ("architectures", "model_type")}
    llm_config = AutoConfig.for_model(family, **text)
    llm_weights = {k: v.contiguous() for k, v in weights.items() if "mm_projector" not in k and "vision_tower" not in k}
    with torch.device("meta"):
        expected = set(AutoModelForCausalLM.from_config(llm_config).state_dict())
    missing = expected - set(llm_weights) - ({"lm_head.weight"} if llm_config.tie_word_embeddings else set())
    if missing:
        raise LlavatuneError(f"{src}: the weights lack {len(missing)} LLM tensors, e.g. {sorted(missing)[0]} "
                             "(a missing shard?).")
    with tempfile.TemporaryDirectory() as tmp:
        llm_config.save_pretrained(tmp)
        save_file(llm_weights, f"{tmp}/model.safetensors", metadata={"format": "pt"})
        return AutoModelForCausalLM.from_pretrained(tmp, dtype=next(iter(llm_weights.values())).dtype)


def fold_lora(weights: dict[str, torch.Tensor], lora: dict[str, torch.Tensor], scale: float, where: str) -> None:
    """In place: W += scale * B @ A for every `<module>.lora_A.weight` in `lora` (module names as in `weights`)."""
    for key, a in lora.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0]
        target = f"{module}.weight"
        if target not in weights:
            raise LlavatuneError(f"{where}: LoRA module {module} has no weight in the base model; wrong base?")
        b = lora[key.replace(".lora_A.", ".lora_B.")]
        weights[target] = (weights[target].float() + scale * (b.float() @ a.float())).to(weights[target].dtype)


def original_lora(src: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config, LoRA tensors named as in the plain LLM) of an original LLaVA LoRA run."""
    adapter = json.loads((src / "adapter_config.json").read_text())
    files = [f for f in (src / "adapter_model.safetensors", src / "adapter_model.bin") if f.is_file()]
    if not files:
        raise LlavatuneError(f"{src}: adapter_config.json but no adapter_model.safetensors or adapter_model.bin.")
    return adapter, {k.removeprefix("base_model.model."): v for k, v in _read_weights(files[:1]).items()}


def merged_lora_weights(src: Path, base: str, merge: bool = True) -> dict[str, torch.Tensor]:
    """An original LoRA run (adapter_model.* + non_lora_trainables.bin) on its base LLM's weights, folded in
    (W += alpha / r * B @ A; alpha / sqrt(r) with rslora) unless `merge` is off, plus the projector."""
    from transformers import AutoModelForCausalLM

    weights = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).state_dict().items()}
    if merge:
        adapter, lora = original_lora(src)
        r, alpha = adapter["r"], adapter["lora_alpha"]
        fold_lora(weights, lora, alpha / (r ** 0.5) if adapter.get("use_rslora") else alpha / r, f"{src} on {base}")
    extra = _read_weights([src / "non_lora_trainables.bin"])
    weights.update({k.removeprefix("base_model.model."): v for k, v in extra.items()})
    return weights


def from_llava(cfg: ConvertConfig, kind: str) -> Path:
    from transformers import AutoTokenizer

    from llavatune.data.templates import get_template
    from llavatune.model import compose
    from llavatune.model.save import check_out_dir, save_pretrained_clean, write_atomically

    check_out_dir(cfg.dst, cfg.overwrite)
    src = Path(cfg.src)
    if kind == "llava-lora" and not cfg.model_base:
        raise LlavatuneError(f"{src} is a LoRA run: it needs its base LLM, --model-base FOLDER (the LLM it was "
                             "trained on, e.g. lmsys/vicuna-7b-v1.5).")
    if kind == "llava-projector":
        if not cfg.model_base or not cfg.vision:
            raise LlavatuneError("--from llava-projector needs --model-base LLM and --vision ENCODER (the stage-1 "
                                 "checkpoint holds only the projector).")
        weights = _read_weights([src])
        llm, tokenizer = compose.load_llm(cfg.model_base, torch.float32)
        config = {"image_aspect_ratio": "pad"}
    else:
        config = json.loads((src / "config.json").read_text())
        weights = (merged_lora_weights(src, cfg.model_base, merge=not cfg.keep_adapter) if kind == "llava-lora"
                   else _read_weights(weight_files(src)))
        llm = _llm_from_original(src, config, weights)
        has_tokenizer = any(src.glob("tokenizer*"))
        # the LLM's config, not src's llava_llama one, which transformers would warn that it does not know
        tokenizer = (AutoTokenizer.from_pretrained(src, config=llm.config) if has_tokenizer
                     else AutoTokenizer.from_pretrained(cfg.model_base))
    name, projector_weights = projector_spec(weights)
    vision_ref = cfg.vision or _vision_ref(src, config)
    try:
        tower, mean, std = compose.load_vision(vision_ref, next(llm.parameters()).dtype)
    except LlavatuneError as err:
        if cfg.vision:
            raise
        raise LlavatuneError(f"{src}/config.json: mm_vision_tower {vision_ref!r} cannot be loaded ({err}). Override "
                             "it with --vision FOLDER (a local copy of that encoder).") from None
    _check_projector(projector_weights, tower, llm, src)
    strategy = {"patch": "default", "cls_patch": "full"}.get(config.get("mm_vision_select_feature", "patch"))
    if strategy is None:
        raise LlavatuneError(f"{src}: mm_vision_select_feature {config.get('mm_vision_select_feature')!r} is "
                             "neither patch nor cls_patch.")
    aspect = "pad" if config.get("image_aspect_ratio") == "pad" else "crop"
    model, processor = compose.assemble(compose.Parts(llm, tokenizer, tower, mean, std),
                                        compose.Projector.parse(name), config.get("mm_vision_select_layer", -2),
                                        strategy, aspect, get_template(cfg.template))
    model.model.multi_modal_projector.load_state_dict(projector_weights, strict=False)

    def write(folder: Path) -> None:
        save_pretrained_clean(model, processor, folder)
        save_run_config(folder, "convert", cfg, model={"template": cfg.template, "converted_from": str(src),
                                                         "vision": vision_ref})
        if kind == "llava-lora" and cfg.keep_adapter:
            write_adapter(src, folder / "adapter", Path(cfg.dst).resolve(), model)

    write_atomically(Path(cfg.dst), cfg.overwrite, write)
    console.print(f"[green]converted[/green] {src} -> {cfg.dst} (projector {name}, {model.config.image_seq_length} "
                  "image tokens)")
    return Path(cfg.dst)


def write_adapter(src: Path, folder: Path, base: Path, model) -> None:
    """The original LoRA as a PEFT adapter of the llava-hf model at `base`: modules renamed into
    model.language_model.*, targets listed by full name so the vision tower's layers are never matched."""
    from safetensors.torch import save_file

    adapter, lora = original_lora(src)
    folder.mkdir()
    renamed = {f"base_model.model.{k.replace('model.', 'model.language_model.', 1)}": v.contiguous()
               for k, v in lora.items()}
    targets = sorted({k.removeprefix("base_model.model.").split(".lora_")[0] for k in renamed})
    known = {name for name, _ in model.named_modules()}
    if missing := [t for t in targets if t not in known]:
        raise LlavatuneError(f"{src}: LoRA module {missing[0]} does not exist in the converted model.")
    config = {**adapter, "target_modules": targets, "base_model_name_or_path": str(base), "peft_type": "LORA",
              "task_type": "CAUSAL_LM", "modules_to_save": None}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(renamed, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    save_run_config(folder, "convert", {"from": str(src)}, model={"base": str(base)})


def _vision_ref(src: Path, config: dict) -> str:
    ref = config.get("mm_vision_tower") or config.get("vision_tower")
    if not ref:
        raise LlavatuneError(f"{src}/config.json has no mm_vision_tower; pass --vision FOLDER_OR_ID.")
    local = src / ref
    if local.exists():  # written relative to the checkpoint (our --to llava export does this)
        return str(local)
    if Path(ref).exists() or "/" in ref and not Path(ref).is_absolute():
        return ref
    raise LlavatuneError(f"{src}/config.json: mm_vision_tower {ref!r} is not on this machine; override it with "
                         "--vision FOLDER (a local copy of that encoder).")


def _check_projector(weights: dict[str, torch.Tensor], tower, llm, src: Path) -> None:
    w = weights["linear_1.weight"]
    expected = (llm.config.hidden_size, tower.config.hidden_size)
    if tuple(w.shape) != expected:
        raise LlavatuneError(f"{src}: mm_projector weight has shape {tuple(w.shape)}; this LLM and encoder need "
                             f"{expected} (LLM hidden x vision hidden). Wrong --model-base or --vision?")


# --- xtuner -> llava-hf ---------------------------------------------------------------------------------

def xtuner_state(src: Path) -> dict[str, torch.Tensor]:
    """The state dict of an xtuner `.pth` file (mmengine: under 'state_dict') or an `iter_N.pth` DeepSpeed folder
    (mp_rank_00_model_states.pt: under 'module'). These are pickles from your own training run."""
    path = src / "mp_rank_00_model_states.pt" if src.is_dir() else src
    # memory-mapped (torch's zip format; not the legacy one): detect() reads the keys, the conversion the tensors,
    # and neither copies the file into memory
    mmap = path.is_file() and zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as err:
        raise LlavatuneError(f"{path}: cannot read the checkpoint ({str(err).splitlines()[0][:120]}).") from None
    for key in ("state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def _split_lora(state: dict[str, torch.Tensor], prefix: str) -> tuple[dict, dict]:
    """(LoRA tensors, full tensors) under an xtuner prefix ('llm.' or 'visual_encoder.'), named as in the
    plain module (PEFT's base_model.model. stripped)."""
    lora, full = {}, {}
    for k, v in state.items():
        if not k.startswith(prefix):
            continue
        name = k[len(prefix):].removeprefix("base_model.model.")
        (lora if "lora_" in name else full)[name] = v
    return lora, full


def from_xtuner(cfg: ConvertConfig) -> Path:
    """An xtuner LLaVA checkpoint (projector, optional LLM / ViT LoRA or full weights) + the LLM and encoder it
    was trained on -> llava-hf."""
    from llavatune.data.templates import get_template
    from llavatune.model import compose
    from llavatune.model.save import check_out_dir, save_pretrained_clean, write_atomically

    src = Path(cfg.src)
    check_out_dir(cfg.dst, cfg.overwrite)
    if not cfg.model_base or not cfg.vision:
        raise LlavatuneError("--from xtuner needs --model-base LLM and --vision ENCODER (the ones the run used).")
    state = xtuner_state(src)
    llm_lora, llm_full = _split_lora(state, "llm.")
    vit_lora, vit_full = _split_lora(state, "visual_encoder.")
    if (llm_lora or vit_lora) and cfg.lora_alpha is None:
        r = next(iter({**llm_lora, **vit_lora}.values())).shape[0]
        raise LlavatuneError(f"{src} holds LoRA weights (r={r}) but not their alpha; pass --lora-alpha (the "
                             "lora_alpha of the xtuner config, e.g. 256 for xtuner's InternLM2 QLoRA recipe).")

    def trained(lora: dict, full: dict):
        """Folds the run's weights into the base's, named as the run saw them (InternLM2 names for InternLM2)."""
        def edit(weights: dict[str, torch.Tensor]) -> None:
            weights.update(full)
            if lora:
                fold_lora(weights, lora, cfg.lora_alpha / next(iter(lora.values())).shape[0], str(src))
        return edit

    llm, tokenizer = compose.load_llm(cfg.model_base, torch.float32,
                                      trained(llm_lora, llm_full) if llm_lora or llm_full else None)
    tower, mean, std = compose.load_vision(cfg.vision, torch.float32)
    if not any(k.startswith("vision_model.") for k in tower.state_dict()):  # transformers 5 flattened CLIP/SigLIP
        vit_lora, vit_full = ({k.removeprefix("vision_model."): v for k, v in d.items()} for d in (vit_lora, vit_full))
    if vit_lora or vit_full:
        weights = {k: v.clone() for k, v in tower.state_dict().items()}
        trained(vit_lora, vit_full)(weights)
        tower.load_state_dict(weights)
    projector = {k.removeprefix("projector.model."): v for k, v in state.items() if k.startswith("projector.model.")}
    name, projector_weights = projector_spec({f"mm_projector.{k}": v for k, v in projector.items()})
    _check_projector(projector_weights, tower, llm, src)
    strategy = "default" if compose.extra_tokens(tower) == 1 else "full"  # xtuner drops CLS unless SigLIP
    model, processor = compose.assemble(compose.Parts(llm, tokenizer, tower, mean, std), compose.Projector.parse(name),
                                        -2, strategy, "pad", get_template(cfg.template))
    model.model.multi_modal_projector.load_state_dict(projector_weights, strict=False)

    def write(folder: Path) -> None:
        save_pretrained_clean(model, processor, folder)
        save_run_config(folder, "convert", cfg, model={"template": cfg.template, "converted_from": str(src)})

    write_atomically(Path(cfg.dst), cfg.overwrite, write)
    console.print(f"[green]converted[/green] xtuner {src} -> {cfg.dst} (LLM LoRA: {len(llm_lora) // 2} modules, "
                  f"ViT LoRA: {len(vit_lora) // 2} modules)")
    return Path(cfg.dst)


# --- llava-hf -> original ------------------------------------------------------------------------------

def to_llava(cfg: ConvertConfig) -> Path:
    from safetensors.torch import save_file
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from llavatune.model.save import save_model, write_atomically

    src = Path(cfg.src)
    model = LlavaForConditionalGeneration.from_pretrained(src)
    if model.config.projector_hidden_act not in ("gelu", "linear"):
        raise LlavatuneError(f"{src}: projector activation {model.config.projector_hidden_act} has no original "
                             "LLaVA equivalent.")
    processor = AutoProcessor.from_pretrained(src)
    text = model.config.text_config
    family = {"llama": "LlavaLlamaForCausalLM", "mistral": "LlavaMistralForCausalLM"}.get(text.model_type)
    if family is None:
        raise LlavatuneError(f"{src}: the original LLaVA code has no class for a {text.model_type} LLM "
                             "(llama and mistral only).")
    weights = {f"model.{k}": v for k, v in model.model.language_model.state_dict().items()}
    weights["lm_head.weight"] = model.lm_head.weight
    weights.update(_original_projector(model))
    tower_cfg = model.config.vision_config

    def write(folder: Path) -> None:
        save_model(model.model.vision_tower, processor.image_processor, folder / "vision_tower")
        save_file({k: v.contiguous().clone() for k, v in weights.items()}, folder / "model.safetensors",
                  metadata={"format": "pt"})
        processor.tokenizer.save_pretrained(folder)
        config = {**text.to_dict(), "architectures": [family], "model_type": f"llava_{text.model_type}",
                  "mm_vision_tower": "vision_tower", "mm_hidden_size": tower_cfg.hidden_size,
                  "mm_projector_type": "linear" if model.config.projector_hidden_act == "linear" else "mlp2x_gelu",
                  "mm_vision_select_layer": model.config.vision_feature_layer,
                  "mm_vision_select_feature": "patch" if model.config.vision_feature_select_strategy == "default"
                  else "cls_patch",
                  "image_aspect_ratio": "pad" if processor.image_processor.do_pad else "square",
                  "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "mm_patch_merge_type": "flat",
                  "tokenizer_padding_side": "right", "use_mm_proj": True}
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_run_config(folder, "convert", cfg)

    write_atomically(Path(cfg.dst), cfg.overwrite, write)
    console.print(f"[green]exported[/green] {src} -> {cfg.dst} (original LLaVA layout, vision tower in vision_tower/)")
    return Path(cfg.dst)


def _original_projector(model) -> dict[str, torch.Tensor]:
    proj = model.model.multi_modal_projector
    if model.config.projector_hidden_act == "linear":  # linear_2 must be the identity for one Linear to equal it
        eye = torch.eye(proj.linear_2.out_features, dtype=proj.linear_2.weight.dtype)
        if not (torch.allclose(proj.linear_2.weight, eye) and not proj.linear_2.bias.any()):
            w = proj.linear_2.weight @ proj.linear_1.weight
            b = proj.linear_2.weight @ proj.linear_1.bias + proj.linear_2.bias
            return {"model.mm_projector.weight": w, "model.mm_projector.bias": b}
        return {"model.mm_projector.weight": proj.linear_1.weight, "model.mm_projector.bias": proj.linear_1.bias}
    return {"model.mm_projector.0.weight": proj.linear_1.weight, "model.mm_projector.0.bias": proj.linear_1.bias,
            "model.mm_projector.2.weight": proj.linear_2.weight, "model.mm_projector.2.bias": proj.linear_2.bias}
