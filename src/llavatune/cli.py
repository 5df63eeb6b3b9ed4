"""Command line: each verb parses its flags into the verb's typed config and calls the verb's `main`. No logic.

Every verb also takes `--config FILE.yaml` and trailing `key=value` overrides; explicit flags win over the
file, overrides win over both.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from llavatune import config as cfglib
from llavatune.errors import LlavatuneError

app = typer.Typer(
    name="llavatune", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Build, convert, fine-tune, evaluate and serve LLaVA-style vision-language models.",
    epilog="Run `llavatune VERB --help` for a verb's options and an example. Add --debug for tracebacks.",
)

OVERRIDES = typer.Argument(None, help="key=value overrides of the config, e.g. projector=linear", show_default=False)
CONFIG = typer.Option(None, "--config", help="YAML file with the verb's options")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="show full tracebacks on errors"),
          version: bool = typer.Option(False, "--version", help="print the version and exit")):
    if version:
        from llavatune import __version__
        print(__version__)
        raise typer.Exit()


@app.command(epilog="Examples:\n\n"
             "  llavatune build --preset tiny --out models/tiny\n\n"
             "  llavatune build --llm Qwen/Qwen1.5-4B-Chat --vision openai/clip-vit-large-patch14-336 "
             "--out models/qwen-clip --dtype bfloat16")
def build(
    out: Path = typer.Option(..., "--out", help="checkpoint folder to write (must not exist or be empty)"),
    llm: Optional[str] = typer.Option(None, help="hub id or folder of a causal LM"),
    vision: Optional[str] = typer.Option(None, help="hub id or folder of a vision encoder (CLIP, SigLIP)"),
    preset: Optional[str] = typer.Option(None, help="tiny | tiny-qwen: random tiny parts, offline"),
    projector: Optional[str] = typer.Option(None, help="linear | mlp2x_gelu (default)"),
    feature_layer: Optional[int] = typer.Option(None, help="vision hidden state to use (default -2)"),
    feature_select: Optional[str] = typer.Option(None, help="auto | default (drop CLS) | full"),
    image_aspect: Optional[str] = typer.Option(None, help="pad (LLaVA-1.5, default) | resize | crop"),
    template: Optional[str] = typer.Option(None, help="conversation template (default: auto)"),
    dtype: Optional[str] = typer.Option(None, help="auto | float32 | bfloat16 | float16"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a non-empty --out"),
    config: Optional[Path] = CONFIG,
    overrides: Optional[list[str]] = OVERRIDES,
):
    """Assemble a LLaVA from any causal LM and vision encoder into a llava-hf checkpoint."""
    from llavatune import build as verb
    verb.main(cfglib.load(verb.BuildConfig, config, overrides, dict(
        out=out, llm=llm, vision=vision, preset=preset, projector=projector, feature_layer=feature_layer,
        feature_select=feature_select, image_aspect=image_aspect, template=template, dtype=dtype,
        overwrite=overwrite or None)))


@app.command(epilog="Example:\n\n  llavatune info models/tiny")
def info(
    model: Path = typer.Argument(..., help="a llava-hf checkpoint folder"),
    json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    config: Optional[Path] = CONFIG,
    overrides: Optional[list[str]] = OVERRIDES,
):
    """Architecture, parameter counts, image tokens per image, template, dtype and files of a checkpoint."""
    from llavatune import info as verb
    verb.main(cfglib.load(verb.InfoConfig, config, overrides, dict(model=model, json=json or None)))


def run(argv: list[str] | None = None) -> None:
    """Console entry point: user errors print as one line (exit 2), tracebacks only with --debug."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        app(args=argv, prog_name="llavatune")
    except LlavatuneError as err:
        if "--debug" in argv:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # an unexpected failure: still one line unless --debug
        if "--debug" in argv:
            raise
        print(f"error: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run()
