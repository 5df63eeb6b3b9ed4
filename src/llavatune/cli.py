"""Command line: each verb parses its flags into the verb's typed config and calls the verb's `main`. No logic.

Every verb also takes `--config FILE.yaml` and trailing `key=value` overrides; explicit flags win over the
file, overrides win over both.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer

from llavatune import config as cfglib
from llavatune.errors import LlavatuneError
from llavatune.hub import local_out  # a --out callback: outputs are local

app = typer.Typer(
    name="llavatune", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Build, convert, fine-tune, evaluate and serve LLaVA-style vision-language models.",
    epilog="Run `llavatune VERB --help` for a verb's options and an example. Add --debug for tracebacks.",
)


def settings(example: str):
    """The trailing key=value settings a verb takes, with an example of that verb's."""
    return typer.Argument(None, help=f"key=value settings of this verb, e.g. {example}", show_default=False)


CONFIG = typer.Option(None, "--config", help="YAML file with the verb's options")
SUFFIX_HELP = ("added to every question: short (LLaVA-1.5's \"Answer the question using a single word or phrase.\" on "
               "a new line), word (ChartQA's \"... with a single word.\"), letter, letter-cn, unanswerable (VizWiz's), "
               "or your own text (\\n for a line break)")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="show full tracebacks on errors"),
          version: bool = typer.Option(False, "--version", help="print the version and exit")):
    if version:
        from llavatune import __version__
        print(__version__)
        raise typer.Exit()


@app.command(epilog="Examples:\n\n"
             "  llavatune build --preset tiny --out models/tiny\n\n"
             "  llavatune build --preset internlm2-1.8b --dtype bfloat16 --out models/random-1.8b\n\n"
             "  llavatune build --llm Qwen/Qwen1.5-4B-Chat --vision openai/clip-vit-large-patch14-336 "
             "--out models/qwen-clip --dtype bfloat16")
def build(
    out: Path = typer.Option(..., "--out", callback=local_out,
                             help="checkpoint folder to write (must not exist or be empty)"),
    llm: Optional[str] = typer.Option(None, help="hub id or folder of a causal LM"),
    vision: Optional[str] = typer.Option(None, help="hub id or folder of a vision encoder (CLIP, SigLIP)"),
    preset: Optional[str] = typer.Option(
        None, help="tiny | tiny-qwen | a shape (llava15-7b, internlm2-1.8b, ...): random weights, offline"),
    projector: Optional[str] = typer.Option(None, help="linear | mlp2x_gelu (default)"),
    feature_layer: Optional[int] = typer.Option(None, help="vision hidden state to use (default -2)"),
    feature_select: Optional[str] = typer.Option(None, help="auto | default (drop CLS) | full"),
    image_aspect: Optional[str] = typer.Option(None, help="pad (LLaVA-1.5, default) | resize | crop"),
    template: Optional[str] = typer.Option(None, help="conversation template (default: auto)"),
    dtype: Optional[str] = typer.Option(None, help="auto | float32 | bfloat16 | float16"),
    device: Optional[str] = typer.Option(None, help="cpu (default) | cuda: where a preset's random weights are made"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a non-empty --out"),
    config: Optional[Path] = CONFIG,
    overrides: Optional[list[str]] = settings("projector=linear"),
):
    """Assemble a LLaVA from any causal LM and vision encoder into a llava-hf checkpoint."""
    from llavatune import build as verb
    verb.main(cfglib.load(verb.BuildConfig, config, overrides, dict(
        out=out, llm=llm, vision=vision, preset=preset, projector=projector, feature_layer=feature_layer,
        feature_select=feature_select, image_aspect=image_aspect, template=template, dtype=dtype, device=device,
        overwrite=overwrite or None)))


@app.command(epilog="Examples:\n\n  llavatune info models/tiny\n\n  llavatune info runs/tiny-lora --json")
def info(
    model: Path = typer.Argument(..., help="a llava-hf checkpoint folder or hub id, a run, or an adapter checkpoint"),
    json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    config: Optional[Path] = CONFIG,
    overrides: Optional[list[str]] = settings("json=true"),
):
    """Architecture, parameter counts, image tokens, template, dtype and files of a checkpoint or adapter.

    An adapter is shown with its base model, rank, targets and step."""
    from llavatune import info as verb
    verb.main(cfglib.load(verb.InfoConfig, config, overrides, dict(model=model, json=json or None)))


@app.command(epilog="Examples:\n\n"
             "  llavatune train tiny-lora.yaml steps=100 lr=1e-3\n\n"
             "  llavatune train tiny-lora.yaml eval_data=data/split/val.json eval_answers=8\n\n"
             "  llavatune train tiny-lora.yaml resume=auto\n\n"
             "  llavatune train qwen15-4b-clip336-lora --dry-run\n\n"
             "Every key a recipe takes, with its default: llavatune configs keys")
def train(
    ctx: typer.Context,
    recipe: str = typer.Argument(..., help="a recipe YAML file, or the name of a shipped recipe (llavatune configs list)"),
    overrides: Optional[list[str]] = settings("steps=100 lr=1e-3"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print model, data, trainable counts, steps and memory; "
                                                          "load no weights"),
    resume: Optional[str] = typer.Option(None, help="auto (newest complete checkpoint) or a checkpoint folder"),
    gpus: Optional[str] = typer.Option(None, help="GPUs to train on, e.g. 0,1,2,3: one process each (DDP)"),
    procs: Optional[int] = typer.Option(None, help="CPU processes (gloo), for machines without GPUs"),
    nodes: int = typer.Option(1, help="machines in the run (multi-node)"),
    node_rank: int = typer.Option(0, help="this machine's rank, 0 .. nodes-1"),
    master_addr: str = typer.Option("127.0.0.1", help="address of the rank-0 machine"),
    master_port: Optional[int] = typer.Option(None, help="a free port on the rank-0 machine, the same on every "
                                                          "machine (default: any free one on one machine, 29500 "
                                                          "across machines)"),
    strategy: Optional[str] = typer.Option(None, help="ddp (default: a whole model per device) | fsdp (FSDP2: "
                                                       "weights, gradients, optimizer state sharded) | zero2 | "
                                                       "zero3 | zero3-offload (DeepSpeed)"),
):
    """Train one stage (pretrain | finetune) with one method (full | freeze | lora | qlora)."""
    import os
    import subprocess

    from llavatune import configs
    from llavatune import train as verb
    from llavatune.training import launch

    n_gpus = _gpu_count(gpus, procs)
    device = "cuda" if n_gpus else "cpu" if procs else None  # --gpus on a machine without them: an error
    asked = [*([f"strategy={strategy}"] if strategy else []),
             *([f"device={device}"] if device and not any(o.startswith("device=") for o in overrides or []) else [])]
    overrides = [*(overrides or []), *asked]
    if dry_run:  # a plan starts no process: made here, for every device of the run
        from llavatune.training.plan import dry_run as plan
        plan(cfglib.load(verb.TrainConfig, configs.resolve(recipe), overrides, dict(resume=resume)),
             devices=(n_gpus or procs or 1) * nodes)
        return
    if (n_gpus > 1 or (procs or 1) > 1 or nodes > 1) and "WORLD_SIZE" not in os.environ:
        debug = ["--debug"] if ctx.find_root().params.get("debug") else []
        argv = [*debug, "train", recipe, *overrides, *([f"resume={resume}"] if resume else [])]
        per_machine = n_gpus or procs or 1
        command = launch.command(argv, per_machine, nodes, node_rank, master_addr, master_port)
        raise typer.Exit(subprocess.run(command, env=launch.environment(per_machine, gpus)).returncode)
    if gpus and n_gpus == 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    verb.main(cfglib.load(verb.TrainConfig, configs.resolve(recipe), overrides, dict(resume=resume)))


@app.command(epilog="Example:\n\n  llavatune merge runs/tiny-lora --out models/tiny-tuned")
def merge(
    run: Path = typer.Argument(..., help="a LoRA run folder (its final/ or newest checkpoint) or a checkpoint"),
    out: Path = typer.Option(..., "--out", callback=local_out, help="folder for the merged llava-hf checkpoint"),
    dtype: Optional[str] = typer.Option(None, help="float32 (default) | bfloat16 | float16; never 4-bit"),
    base: Optional[Path] = typer.Option(None, help="the base model, where the folder the run names has moved"),
    overwrite: bool = typer.Option(False, "--overwrite"),
):
    """Fold a LoRA adapter into its base model: a plain llava-hf checkpoint."""
    from llavatune import merge as verb
    verb.main(cfglib.load(verb.MergeConfig, None, None, dict(run=run, out=out, dtype=dtype, base=base,
                                                             overwrite=overwrite or None)))


@app.command(epilog="Examples:\n\n  llavatune convert llava-v1.5-7b models/llava15-7b-hf\n\n"
             "  llavatune convert mm_projector.bin models/stage1 --from llava-projector --model-base LLM --vision CLIP\n\n"
             "  llavatune convert models/llava15-7b-hf exported/llava-v1.5-7b --to llava")
def convert(
    src: Path = typer.Argument(..., help="checkpoint folder or hub id (or a stage-1 mm_projector.bin)"),
    dst: Path = typer.Argument(..., help="folder to write", callback=local_out),
    from_: Optional[str] = typer.Option(None, "--from", help="auto (default) | llava | llava-lora | llava-projector | xtuner | hf"),
    to: Optional[str] = typer.Option(None, help="hf (default) | llava (the original repository's layout)"),
    model_base: Optional[str] = typer.Option(None, help="the LLM a projector-only checkpoint was trained on"),
    vision: Optional[str] = typer.Option(None, help="vision encoder folder; overrides mm_vision_tower"),
    template: Optional[str] = typer.Option(None, help="chat template of the result (default vicuna_v1)"),
    lora_alpha: Optional[float] = typer.Option(None, help="xtuner runs: the lora_alpha of the training config"),
    keep_adapter: bool = typer.Option(False, "--keep-adapter", help="LoRA runs: keep the adapter (DST/adapter) "
                                                                    "instead of merging it"),
    overwrite: bool = typer.Option(False, "--overwrite"),
):
    """Convert original LLaVA (full, LoRA, stage-1 projector) and xtuner checkpoints to llava-hf, and back."""
    from llavatune import convert as verb
    verb.main(cfglib.load(verb.ConvertConfig, None, None, dict(
        src=src, dst=dst, src_format=from_, to=to, model_base=model_base, vision=vision, template=template,
        lora_alpha=lora_alpha, keep_adapter=keep_adapter or None, overwrite=overwrite or None)))


@app.command("eval", epilog="Example:\n\n  llavatune eval models/tiny --compare models/tiny-tuned "
             "--data data/val.json --images data --out runs/eval")
def eval_(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="model folder or hub id, run or checkpoint (the base when comparing)"),
    data: Path = typer.Option(..., help="evaluation set; the last assistant turn of each sample is the reference"),
    out: Path = typer.Option(..., "--out", callback=local_out, help="folder for predictions.jsonl and metrics.json"),
    images: Optional[Path] = typer.Option(None, help="folder (or .zip archive) the image paths are relative to, or a "
                                          "table of images by id (GQA's)"),
    compare: Optional[Path] = typer.Option(None, help="a second (fine-tuned) model: labels base / finetuned"),
    adapter: Optional[Path] = typer.Option(None, help="or: MODEL with this LoRA run as the second model"),
    metrics: Optional[str] = typer.Option(None, help="comma list of em (default), vqa, yesno, pope, choice, mme, "
                                          "mmbench, mmmu, anls (DocVQA), relaxed (ChartQA), ocrbench"),
    limit: Optional[int] = typer.Option(None, help="only the first N samples"),
    batch_size: Optional[int] = typer.Option(None, help="default 1; batched answers are the same"),
    max_new_tokens: Optional[int] = typer.Option(None),
    prompt_suffix: Optional[str] = typer.Option(None, help=SUFFIX_HELP),
    ocr_tokens: bool = typer.Option(False, "--ocr-tokens", help="TextVQA rows: \"Reference OCR token: ...\" after "
                                    "the question (LLaVA-1.5's TextVQA prompt)"),
    gpus: Optional[str] = typer.Option(None, help="GPUs to answer on, e.g. 0,1,2,3: a process each, a share of the "
                                                  "questions each"),
    procs: Optional[int] = typer.Option(None, help="CPU processes, each answering a share of the questions"),
    overrides: Optional[list[str]] = settings("template=vicuna_v1 device=cpu"),
):
    """Answer an evaluation set greedily with one or two models and score the answers.

    Answers are written as they come: the same command after a kill answers only the rest."""
    import os
    import subprocess

    from llavatune import evaluate as verb
    from llavatune.training import launch

    n_gpus = _gpu_count(gpus, procs)
    if (n_gpus > 1 or (procs or 1) > 1) and "WORLD_SIZE" not in os.environ:
        per_machine = n_gpus or procs
        command = launch.command(_same_command(ctx), per_machine)
        raise typer.Exit(subprocess.run(command, env=launch.environment(per_machine, gpus)).returncode)
    if gpus and n_gpus == 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    device = "cuda" if n_gpus else "cpu" if procs else None
    verb.main(cfglib.load(verb.EvalConfig, None, overrides, dict(
        model=model, data=data, out=out, images=images, compare=compare, adapter=adapter, metrics=metrics,
        limit=limit, batch_size=batch_size, max_new_tokens=max_new_tokens, prompt_suffix=prompt_suffix,
        ocr_tokens=ocr_tokens or None, device=device)))  # a device= setting still wins


def _gpu_count(gpus: str | None, procs: int | None) -> int:
    """The GPUs --gpus names (0,1,2,3: four); with --procs as well, an error."""
    n_gpus = len([g for g in (gpus or "").split(",") if g.strip()])
    if n_gpus and procs:
        raise typer.BadParameter("give --gpus (one process per GPU) or --procs (CPU processes), not both")
    return n_gpus


def _same_command(ctx: typer.Context) -> list[str]:
    """This verb's command line again, from the values it was given: what each process of a launch runs (it
    sees WORLD_SIZE and answers its share instead of launching)."""
    argv = ["--debug"] if ctx.find_root().params.get("debug") else []
    argv.append(ctx.info_name)
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value is False or value == () or value == []:
            continue
        if param.param_type_name == "argument":
            argv += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
        elif getattr(param, "is_flag", False):
            argv.append(param.opts[0])
        else:
            argv += [param.opts[0], str(value)]
    return argv


@app.command(epilog="Examples:\n\n  llavatune chat runs/demo/models/tiny-tuned --image "
             "runs/demo/data/images/shape_00000.png\n\n  llavatune chat runs/demo/runs/lora --image "
             "runs/demo/data/images/shape_00000.png --prompt \"What colour is the shape? Answer with one word.\"")
def chat(
    model: Path = typer.Argument(..., help="llava-hf folder or hub id, run or checkpoint"),
    adapter: Optional[Path] = typer.Option(None, help="a LoRA run or checkpoint to apply to MODEL"),
    image: Optional[str] = typer.Option(None, help="an image file or http(s) URL for the first question"),
    prompt: Optional[str] = typer.Option(None, help="answer this once and exit"),
    load_4bit: bool = typer.Option(False, "--load-4bit", help="load the LLM in 4-bit (CUDA + bitsandbytes)"),
    template: Optional[str] = typer.Option(None, help="conversation template (default: the model's own)"),
    max_new_tokens: Optional[int] = typer.Option(None),
    temperature: Optional[float] = typer.Option(None, help="0 = greedy (default)"),
    top_p: Optional[float] = typer.Option(None, help="with a temperature: sample from this share of the "
                                                     "probability mass (default 1)"),
):
    """Chat in the terminal (streamed; /image PATH, /reset, /quit), or answer one --prompt."""
    from llavatune import chat as verb
    verb.main(cfglib.load(verb.ChatConfig, None, None, dict(
        model=model, adapter=adapter, image=image, prompt=prompt, load_4bit=load_4bit or None, template=template,
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)))


@app.command(epilog="Example:\n\n  llavatune serve runs/demo/models/tiny --compare runs/demo/models/tiny-tuned "
             "--data runs/demo/data/val.json --images runs/demo/data")
def serve(
    model: Path = typer.Argument(..., help="llava-hf folder or hub id, run or checkpoint"),
    compare: Optional[Path] = typer.Option(None, help="a second model shown next to the first"),
    adapter: Optional[Path] = typer.Option(None, help="or: MODEL with this LoRA run as the second model"),
    host: Optional[str] = typer.Option(None, help="address to bind (default 127.0.0.1: this machine only)"),
    port: Optional[int] = typer.Option(None, help="default 8000"),
    api_key: Optional[str] = typer.Option(None, envvar="LLAVATUNE_API_KEY",
                                          help="require `Authorization: Bearer KEY` (or set LLAVATUNE_API_KEY, which "
                                               "stays out of the process list and shell history)"),
    max_image_mb: Optional[float] = typer.Option(None, help="largest accepted image (default 10)"),
    allow_remote_images: bool = typer.Option(False, "--allow-remote-images", help="fetch http(s) image URLs"),
    data: Optional[Path] = typer.Option(None, help="dataset for the page's sample tab"),
    images: Optional[Path] = typer.Option(None, help="its image folder"),
    load_4bit: bool = typer.Option(False, "--load-4bit"),
    template: Optional[str] = typer.Option(None, help="conversation template (default: each model's own)"),
):
    """OpenAI-compatible API and a web page comparing two models, in one process."""
    from llavatune import serve as verb
    verb.main(cfglib.load(verb.ServeConfig, None, None, dict(
        model=model, compare=compare, adapter=adapter, host=host, port=port, api_key=api_key,
        max_image_mb=max_image_mb, allow_remote_images=allow_remote_images or None, data=data, images=images,
        load_4bit=load_4bit or None, template=template)))


@app.command(epilog="Examples:\n\n  llavatune bench train --shape tiny --baseline hf --steps 3\n\n"
             "  llavatune bench train --shape llava15-7b --method lora --lengths llava665k --steps 20\n\n"
             "  llavatune bench generate --shape tiny --new-tokens 8 batches=[1,2]")
def bench(
    what: str = typer.Argument("train", help="train | generate"),
    shape: Optional[str] = typer.Option(None, help="tiny | llava15-7b | llava15-13b | qwen15-4b | internlm2-1.8b"),
    method: Optional[str] = typer.Option(None, help="lora (default) | full"),
    lengths: Optional[str] = typer.Option(None, help="fixed (736 tokens) | llava665k (the 665K mix)"),
    baseline: Optional[str] = typer.Option(None, help="hf (Trainer + PEFT, default) | none"),
    steps: Optional[int] = typer.Option(None, help="measured optimizer steps"),
    batch_size: Optional[int] = typer.Option(None),
    new_tokens: Optional[int] = typer.Option(None, help="generate: tokens per answer"),
    out: Optional[Path] = typer.Option(None, "--out", callback=local_out, help="JSON results"),
    overrides: Optional[list[str]] = settings("packing=true attention=flex_attention"),
):
    """Our training step or generation against the plain HF baseline: same model, same data, same run.

    Fast-path switches go as key=value (packing=true attention=flex_attention)."""
    from llavatune import bench as verb
    verb.main(cfglib.load(verb.BenchConfig, None, overrides, dict(
        what=what, shape=shape, method=method, lengths=lengths, baseline=baseline, steps=steps,
        batch_size=batch_size, new_tokens=new_tokens, out=out)))


@app.command(epilog="Example:\n\n  llavatune demo --out runs/demo")
def demo(
    out: Optional[Path] = typer.Option(None, "--out", callback=local_out,
                                       help="folder for everything the demo makes (runs/demo)"),
    overrides: Optional[list[str]] = settings("finetune_steps=200 seed=1"),
):
    """Offline end to end on the tiny model: data, stage 1, LoRA stage 2, merge, before/after evaluation."""
    from llavatune import demo as verb
    verb.main(cfglib.load(verb.DemoConfig, None, overrides, dict(out=out)))


configs_app = typer.Typer(no_args_is_help=True, help="List, show and copy the shipped training recipes; list their keys.")
app.add_typer(configs_app, name="configs")


@configs_app.command("list", epilog="Example:\n\n  llavatune configs list")
def configs_list():
    """Every shipped recipe with its one-line summary."""
    from llavatune import configs
    for name in configs.names():
        print(f"{name:<34} {configs.summary(name)}")


@configs_app.command("show", epilog="Example:\n\n  llavatune configs show tiny-lora")
def configs_show(name: str = typer.Argument(..., help="recipe name")):
    """Print a recipe."""
    from llavatune import configs
    print(configs.path_of(name).read_text(), end="")


@configs_app.command("keys", epilog="Example:\n\n  llavatune configs keys")
def configs_keys():
    """Every key a training recipe may set (or key=value may override): type, default and meaning."""
    from rich.table import Table

    from llavatune import configs, progress
    if not progress.results.is_terminal or progress.results.width < 120:  # piped to grep, or a table too narrow
        for key, kind, default, meaning in configs.keys():
            print(f"{key}  ({kind}, {'required' if default == '(required)' else 'default ' + default})  {meaning}")
        return
    table = Table("key", title="training recipe keys")
    table.add_column("type", max_width=24)  # a long Literal wraps; the meaning keeps the room
    table.add_column("default")
    table.add_column("meaning", overflow="fold")  # a file name in it folds instead of ending in "..."
    for row in configs.keys():
        table.add_row(*row)
    progress.results.print(table)


@configs_app.command("copy", epilog="Example:\n\n  llavatune configs copy tiny-lora my-recipe.yaml")
def configs_copy(name: str = typer.Argument(...), dst: Path = typer.Argument(..., help="file or folder"),
                 overwrite: bool = typer.Option(False, "--overwrite")):
    """Copy a recipe to edit it."""
    from llavatune import configs
    print(f"copied {name} to {configs.copy(name, dst, overwrite)}", file=sys.stderr)


data_app = typer.Typer(no_args_is_help=True, help="Prepare, check and inspect training data.")
app.add_typer(data_app, name="data")


OUT_HELP = ".json / .jsonl, .parquet (keeps the images of parquet data inside), or - for JSON lines on stdout"


def _ok(n: int, out) -> None:
    if str(out) != "-":
        print(f"wrote {n:,} row{'s' * (n != 1)} to {out}", file=sys.stderr)


@data_app.command("validate", epilog="Example:\n\n  llavatune data validate data/qa.json --images data "
                  "--model models/tiny")
def data_validate(
    data: Path = typer.Argument(..., help="data file (.json, .jsonl, .parquet, .arrow), dataset folder, or "
                                          "hf://datasets/ORG/NAME/PATH"),
    images: Optional[Path] = typer.Option(None, help="folder (or .zip archive) that image paths are relative to, or a "
                                          "table of images by id (GQA's)"),
    model: Optional[Path] = typer.Option(None, help="llava-hf folder or run: also check tokens and lengths"),
    template: Optional[str] = typer.Option(None, help="template (default: the model's)"),
    max_length: Optional[int] = typer.Option(None, help="token budget per sample, image tokens included"),
    no_decode: bool = typer.Option(False, "--no-decode", help="check that images exist but do not decode them"),
    report: Optional[Path] = typer.Option(None, help="file for the bad rows (default: DATA.errors.txt)"),
    prompt_suffix: Optional[str] = typer.Option(None, help=SUFFIX_HELP + ", as the run's prompt_suffix"),
):
    """Check every row: schema, roles, images, <image> tags, duplicates, tokens; exit 2 on problems."""
    from llavatune.data import checks
    checks.main(cfglib.load(checks.ValidateConfig, None, None, dict(
        data=data, images=images, model=model, template=template, max_length=max_length,
        decode=False if no_decode else None, report=report, prompt_suffix=prompt_suffix)))


@data_app.command("stats", epilog="Example:\n\n  llavatune data stats data/qa.json --model models/tiny")
def data_stats(
    data: Path = typer.Argument(..., help="data file or dataset folder"),
    model: Optional[Path] = typer.Option(None, help="count tokens with this model (else words)"),
    plot: Optional[Path] = typer.Option(None, help="PNG for the length histogram"),
    limit: Optional[int] = typer.Option(None, help="only the first N rows"),
    images: Optional[Path] = typer.Option(None, help="image folder: also image sizes (megapixels, headers only)"),
    prompt_suffix: Optional[str] = typer.Option(None, help=SUFFIX_HELP + ", as the run's prompt_suffix"),
):
    """Counts, text-only share and a length histogram (with image tokens) as a table and a PNG."""
    from llavatune.data import stats
    stats.stats(cfglib.load(stats.StatsConfig, None, None, dict(data=data, model=model, plot=plot, limit=limit,
                                                                images=images, prompt_suffix=prompt_suffix)))


@data_app.command("preview", epilog="Example:\n\n  llavatune data preview data/qa.json --model models/tiny --index 0")
def data_preview(
    data: Path = typer.Argument(..., help="data file"),
    model: Path = typer.Option(..., help="llava-hf folder, run or checkpoint (tokenizer and template)"),
    index: int = typer.Option(0, help="row number, from 0"),
    template: Optional[str] = typer.Option(None, help="template (default: the model's)"),
    prompt_suffix: Optional[str] = typer.Option(None, help=SUFFIX_HELP + ", as the run's prompt_suffix"),
):
    """Show one sample as it is trained on: supervised text in green, token counts."""
    from llavatune.data import stats
    stats.preview(cfglib.load(stats.PreviewConfig, None, None, dict(data=data, model=model, index=index,
                                                                     template=template, prompt_suffix=prompt_suffix)))


@data_app.command("render", epilog="Example:\n\n  echo '[{\"from\": \"human\", \"value\": \"Hi\"}, "
                  "{\"from\": \"gpt\", \"value\": \"Hello\"}]' | llavatune data render --template vicuna_v1")
def data_render(
    template: str = typer.Option(..., help="template name (vicuna_v1, plain, chatml_direct, hf, ...)"),
    generation_prompt: bool = typer.Option(False, "--generation-prompt",
                                           help="print the prompt that generates the last assistant turn"),
    model: Optional[Path] = typer.Option(None, help="model folder whose tokenizer the hf template uses"),
):
    """Read a conversation (JSON list of {"from", "value"}) on stdin; print exactly the text trained on."""
    from llavatune.data import tools
    sys.stdout.write(tools.render_conversation(sys.stdin.read(), template, generation_prompt, model))
    sys.stdout.flush()


@data_app.command("sample", epilog="Example:\n\n  llavatune data sample data/qa.json --n 100 --seed 0 --out data/qa100.json")
def data_sample(
    data: str = typer.Argument(..., help="data file, or - for JSON lines on stdin"),
    n: int = typer.Option(..., help="rows to keep"),
    seed: int = typer.Option(0, help="random seed"),
    out: str = typer.Option(..., callback=local_out, help=OUT_HELP),
):
    """Keep N rows chosen uniformly with a seed (input order preserved)."""
    from llavatune.data import tools
    _ok(tools.write_rows(out, tools.sample(tools.rows_of(data), n, seed)), out)


@data_app.command("filter", epilog="Example:\n\n  llavatune data filter llava_v1_5_mix665k.json "
                  "--image-prefix textvqa/ --out textvqa.json")
def data_filter(
    data: str = typer.Argument(..., help="data file, or - for JSON lines on stdin"),
    image_prefix: Optional[str] = typer.Option(None, help="keep rows with an image path starting with this"),
    text_only: Optional[bool] = typer.Option(None, "--text-only/--with-images", help="keep only text-only rows, "
                                             "or only rows with images"),
    contains: Optional[str] = typer.Option(None, help="keep rows whose JSON contains this text"),
    out: str = typer.Option(..., callback=local_out, help=OUT_HELP),
):
    """Keep the rows that match every given condition."""
    from llavatune.data import tools
    _ok(tools.write_rows(out, tools.filter_rows(tools.rows_of(data), image_prefix, text_only, contains)), out)


@data_app.command("repeat", epilog="Example:\n\n  llavatune data repeat data/qa.json --times 3 --out data/qa-x3.json")
def data_repeat(data: str = typer.Argument(...), times: int = typer.Option(..., help="copies of the data"),
                out: str = typer.Option(..., callback=local_out, help=OUT_HELP)):
    """Write the data N times over (for tiny datasets, as in xtuner's repeat)."""
    from llavatune.data import tools
    _ok(tools.write_rows(out, tools.repeat(data, times)), out)


@data_app.command("split", epilog="Example:\n\n  llavatune data split data/qa.json --val 0.1 --seed 0 --out data/split")
def data_split(data: str = typer.Argument(...), val: float = typer.Option(0.1, help="validation share (0.1) or rows (200)"),
               seed: int = typer.Option(0),
               by: str = typer.Option("image", help="image: rows that share an image stay on one side; row: rows "
                                                    "drawn alone, the exact size"),
               out: Path = typer.Option(..., callback=local_out,
                                        help="folder for train.json and val.json (.parquet for parquet data)")):
    """Seeded train/validation split; rows that share an image stay on one side."""
    from llavatune.data import tools
    for file, n in tools.write_split(data, val, seed, out, by):
        _ok(n, file)


@data_app.command("mix", epilog="Example:\n\n  llavatune data mix data/qa.json:1 data/captions.json:0.5 --out data/mix.json")
def data_mix(sources: list[str] = typer.Argument(..., help="FILE or FILE:WEIGHT (0.5 = half, 2 = twice)"),
             seed: int = typer.Option(0), out: str = typer.Option(..., callback=local_out, help=OUT_HELP)):
    """Mix datasets with weights, shuffled with a seed.

    Image paths stay as they are: JSON sources must name their images relative to one folder.

    Sources with images in different folders: pack each into .parquet first (data convert), then mix into a .parquet."""
    from llavatune.data import tools
    _ok(tools.write_rows(out, tools.mix(sources, seed)), out)


@data_app.command("convert", epilog="Examples:\n\n  llavatune data convert data/qa.json --to messages --out data/qa.jsonl"
                  "\n\n  llavatune data convert data/qa.json --images data --out data/qa.parquet"
                  "\n\n  llavatune data convert data/qa.parquet --images data/unpacked --out data/qa.json")
def data_convert(data: str = typer.Argument(...), to: str = typer.Option("llava", help="llava | sharegpt | messages"),
                 out: str = typer.Option(..., callback=local_out,
                                         help=".json, .jsonl, or .parquet: LLaVA rows with the images inside"),
                 images: Optional[Path] = typer.Option(None, help="for a .parquet --out: the folder the image files "
                                                       "are read from; for JSON: the folder the images inside the "
                                                       "data (parquet bytes, data URIs) are unpacked to")):
    """Convert between LLaVA JSON, ShareGPT and OpenAI messages; pack images into parquet, or unpack them.

    To a .parquet --out, each row's image files (read from --images) go inside it.

    From data holding images (parquet, data URIs) to JSON, the images are written into --images, the rows name them."""
    from llavatune.data import tools
    _ok(tools.convert_file(data, to, out, images), out)


@data_app.command("from-folders", epilog="Example:\n\n  llavatune data from-folders data/defects "
                  "--question \"Is this part OK or NG?\" --answer OK=OK --answer NG=NG --out data/okng.json")
def data_from_folders(
    root: Path = typer.Argument(..., help="folder with one sub-folder per class"),
    question: str = typer.Option(..., help="the question asked about every image"),
    answer: Optional[list[str]] = typer.Option(None, help="CLASS=answer text (default: the class name)"),
    out: str = typer.Option(..., callback=local_out),
):
    """Turn class folders of photos into question/answer rows (image paths relative to ROOT)."""
    from llavatune.data import tools
    answers = dict(a.split("=", 1) for a in answer or [] if "=" in a)
    if len(answers) != len(answer or []):
        raise LlavatuneError("--answer must be CLASS=text, for example --answer NG=\"a scratch\".")
    _ok(tools.write_rows(out, tools.from_folders(root, question, answers)), out)


@data_app.command("synth", epilog="Example:\n\n  llavatune data synth --kind shapes --n 200 --out data/shapes")
def data_synth(
    out: Path = typer.Option(..., callback=local_out, help="folder to write images and JSON into"),
    kind: Optional[str] = typer.Option(None, help="shapes | defects"),
    n: Optional[int] = typer.Option(None, help="images (defects: per class)"),
    seed: Optional[int] = typer.Option(None),
    tasks: Optional[str] = typer.Option(None, help="comma list of colour, shape, count, position"),
    lang: Optional[str] = typer.Option(None, help="en | zh: questions and answers in English or Chinese"),
    overrides: Optional[list[str]] = settings("size=128"),
):
    """Write a deterministic synthetic dataset (LLaVA JSON + PNG files)."""
    from llavatune.data import synth
    synth.main(cfglib.load(synth.SynthConfig, None, overrides, dict(out=out, kind=kind, n=n, seed=seed,
                                                                     tasks=tasks, lang=lang)))
    print(f"wrote {kind or 'shapes'} data to {out}", file=sys.stderr)


def run(argv: list[str] | None = None) -> None:
    """Console entry point: user errors print as one line (exit 2), tracebacks only with --debug."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        app(args=argv, prog_name="llavatune")
    except Exception as err:
        if debug and not _launched():
            raise
        if debug:
            traceback.print_exc()
        else:
            print(f"error: {_process()}{_one_line(err)}", file=sys.stderr)
        _exit(2 if isinstance(err, LlavatuneError) else 1)


def _one_line(err: Exception) -> str:
    if isinstance(err, LlavatuneError):
        return str(err)
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if _launched() and ("closed by peer" in first or "reset by peer" in first):  # gloo, when another rank failed
        return "another process of the run is gone; the first error above is why."
    return f"{type(err).__name__}: {first} (rerun with --debug for the traceback)"


def _launched() -> bool:
    """One process of a multi-process run (torchrun, accelerate or deepspeed launched it)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _process() -> str:
    """'process R: ' in a multi-process run, where each process prints its own errors; else nothing."""
    return f"process {os.environ.get('RANK', '?')}: " if _launched() else ""


def _exit(code: int) -> None:
    """A failed process of a multi-process run leaves at once. Interpreter shutdown would free the DDP reducer,
    whose gloo process group joins a worker thread that waits for the GIL the joining thread holds: the
    process hangs, and the other ranks with it in their next collective, instead of the launcher ending them."""
    if _launched():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
