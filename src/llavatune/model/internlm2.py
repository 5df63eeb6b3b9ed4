"""InternLM2 checkpoints read as Llama: no remote code, and a result that plain transformers loads.

InternLM2 (internlm/internlm2-chat-1_8b and kin) is a Llama decoder under other names, with q, k and v packed
into one `wqkv` matrix; its hub repos ship the model as remote code, which transformers 5 does not run without
`trust_remote_code` and which a llava-hf checkpoint cannot hold. So, as InternLM's own `convert2llama` tool
does, its config.json and weights are read directly and renamed, and `wqkv` is split; its SentencePiece
`tokenizer.model` becomes a fast tokenizer built the way InternLM2's own fast tokenizer converts it.

    wqkv rows, (kv_heads * (q_per_kv + 2) * head_dim, hidden): grouped per key/value head, each group holding
    its q_per_kv query heads, then its key head, then its value head.

Checked once (2026-11-23) against the released remote code (modeling_internlm2.py, whose attention splits wqkv
with einops "b q (h gs d) -> b q h gs d", gs = q_per_kv + 2): 2 random layers, 8 query / 2 key-value heads,
rope_theta 1e6, its eager forward and ours agree to 9e-7 (fp32). Its code is not ours to ship, so the tests
check the same layout against a Llama packed into it (tests/model/test_internlm2.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llavatune.errors import LlavatuneError

RENAMES = {  # InternLM2 name piece -> Llama's
    ".attention.wo.": ".self_attn.o_proj.",
    ".feed_forward.w1.": ".mlp.gate_proj.",
    ".feed_forward.w3.": ".mlp.up_proj.",
    ".feed_forward.w2.": ".mlp.down_proj.",
    ".attention_norm.": ".input_layernorm.",
    ".ffn_norm.": ".post_attention_layernorm.",
}
TOP_LEVEL = {"model.tok_embeddings.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
             "model.norm.weight": "model.norm.weight"}


def raw_config(ref: str) -> dict | None:
    """config.json of a folder or a cached/reachable hub id as a dict, or None when there is none to read."""
    path = Path(ref) / "config.json"
    if not path.is_file():
        try:
            from transformers.utils.hub import cached_file
            path = cached_file(ref, "config.json")
        except (OSError, ValueError):
            return None
    return json.loads(Path(path).read_text()) if path else None


def is_internlm2(ref: str) -> bool:
    config = raw_config(ref)
    return bool(config) and config.get("model_type") == "internlm2"


def llama_config(raw: dict) -> LlamaConfig:
    if raw.get("bias"):
        raise LlavatuneError("this InternLM2 has biases in its linear layers, which the Llama layout has no place "
                             "for; only the released bias-free InternLM2 models can be used.")
    scaling = raw.get("rope_scaling")
    if scaling:  # InternLM2: {"type": "dynamic"|"linear", "factor": f}, the same maths as Llama's rope types
        scaling = {"rope_type": scaling.get("type", scaling.get("rope_type")), "factor": scaling["factor"]}
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "hidden_act", "initializer_range",
            "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")
    return LlamaConfig(**{k: raw[k] for k in keys if k in raw}, rope_theta=raw.get("rope_theta", 10000.0),
                       rope_scaling=scaling, attention_bias=False, mlp_bias=False)


def split_wqkv(wqkv: torch.Tensor, heads: int, kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q_proj, k_proj, v_proj) weights from a packed wqkv; shapes (heads*d, in), (kv_heads*d, in) twice."""
    per_kv = heads // kv_heads
    head_dim = wqkv.shape[0] // (kv_heads * (per_kv + 2))
    groups = wqkv.reshape(kv_heads, per_kv + 2, head_dim, wqkv.shape[-1])
    q = groups[:, :per_kv].reshape(heads * head_dim, -1)
    k, v = (groups[:, i].reshape(kv_heads * head_dim, -1) for i in (per_kv, per_kv + 1))
    return q.contiguous(), k.contiguous(), v.contiguous()


def to_llama(state: dict[str, torch.Tensor], config: LlamaConfig) -> dict[str, torch.Tensor]:
    """InternLM2 weight names -> Llama's, wqkv split. Linear in the weights, so it converts deltas too."""
    out = {}
    for name, tensor in state.items():
        if name in TOP_LEVEL:
            out[TOP_LEVEL[name]] = tensor
        elif name.endswith(".attention.wqkv.weight"):
            prefix = name.removesuffix("attention.wqkv.weight")
            q, k, v = split_wqkv(tensor, config.num_attention_heads, config.num_key_value_heads)
            out.update({f"{prefix}self_attn.q_proj.weight": q, f"{prefix}self_attn.k_proj.weight": k,
                        f"{prefix}self_attn.v_proj.weight": v})
        else:
            piece = next((p for p in RENAMES if p in name), None)
            if piece is None:
                raise LlavatuneError(f"InternLM2 weight '{name}' has no Llama counterpart; is this InternLM2?")
            out[name.replace(piece, RENAMES[piece])] = tensor
    return out


def _folder(ref: str) -> Path:
    if Path(ref).is_dir():
        return Path(ref)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(ref, allow_patterns=["*.json", "*.safetensors", "*.bin", "tokenizer.model"]))


def read_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise LlavatuneError(f"{folder}: no *.safetensors or pytorch_model*.bin weights.")
    state = {}
    for f in files:
        state.update(load_file(f) if f.suffix == ".safetensors" else torch.load(f, map_location="cpu",
                                                                                  weights_only=True))
    return state


def load(ref: str, dtype: torch.dtype | None = None,
         edit: Callable[[dict[str, torch.Tensor]], None] | None = None) -> tuple[LlamaForCausalLM, object]:
    """(LlamaForCausalLM, fast tokenizer) of an InternLM2 folder or hub id. `edit` may change the weights in
    place while they still carry InternLM2 names (xtuner's LoRA deltas are named that way)."""
    folder = _folder(ref)
    raw = json.loads((folder / "config.json").read_text())
    config = llama_config(raw)
    state = read_state(folder)
    if edit is not None:
        edit(state)
    weights = to_llama(state, config)
    dtype = dtype or {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(raw.get("torch_dtype"), torch.float32)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    model.load_state_dict({k: v.to(dtype) for k, v in weights.items()}, strict=False, assign=True)
    model.tie_weights()
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)  # buffers computed, not loaded
    missing = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if missing:
        raise LlavatuneError(f"{ref}: InternLM2 weights lack {', '.join(missing[:3])}; incomplete checkpoint?")
    return model.eval(), tokenizer(folder)


def tokenizer(folder: Path):
    """InternLM2's SentencePiece BPE as a fast tokenizer that splits like SentencePiece itself (and so like
    InternLM2's own tokenizer): byte fallback, a '▁' prepended only when the model's add_dummy_prefix says so
    (transformers' LlamaTokenizer always prepends one), specials from tokenizer_config.json kept whole."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    if not (folder / "tokenizer.model").is_file():
        raise LlavatuneError(f"{folder}: no tokenizer.model (InternLM2's SentencePiece tokenizer).")
    try:
        spm = SentencePieceExtractor(str(folder / "tokenizer.model"))
    except ImportError:
        raise LlavatuneError("reading InternLM2's tokenizer.model needs sentencepiece and protobuf: "
                             "pip install sentencepiece protobuf") from None
    parts, spec = spm.extract(BPE), spm.proto.normalizer_spec
    tok = Tokenizer(BPE(parts["vocab"], parts["merges"], unk_token=spm.proto.trainer_spec.unk_piece, fuse_unk=True,
                        byte_fallback=True))
    tok.normalizer = normalizers.Sequence([*([normalizers.Prepend("▁")] if spec.add_dummy_prefix else []),
                                           normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     *([decoders.Strip(" ", 1, 0)] if spec.add_dummy_prefix else [])])
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    listed = {t["content"]: t.get("special", True) for t in config.get("added_tokens_decoder", {}).values()}
    symbols = {t.content: listed.get(t.content, t.special) for t in parts["additional_special_tokens"]}
    tok.add_special_tokens([AddedToken(text, special=True, normalized=False)
                            for text, special in {**symbols, **listed}.items() if special])
    tok.add_tokens([AddedToken(text, normalized=False) for text, special in symbols.items() if not special])
    bos, eos = config.get("bos_token", "<s>"), config.get("eos_token", "</s>")
    if config.get("add_bos_token", True):
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos,
                                   unk_token=config.get("unk_token", "<unk>"), pad_token=config.get("pad_token"),
                                   clean_up_tokenization_spaces=False)
