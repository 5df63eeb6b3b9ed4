"""Hub ids load like folders, from a hub cache that the tests write (offline: HF_HUB_OFFLINE=1 in conftest), in the
layout huggingface_hub keeps: models--ORG--NAME/refs/main -> snapshots/<commit>/files."""

from __future__ import annotations

import shutil

import pytest
import yaml
from huggingface_hub import constants

from llavatune import hub
from llavatune.errors import LlavatuneError
from llavatune.model import load as loadlib

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """put(repo_id, folder, kind="models"|"datasets"): `folder` as that repo's main revision in a fresh cache."""
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    hub.data_path.cache_clear()  # hub data found in another test's cache is not in this one
    hub.data_shards.cache_clear()

    def put(repo_id: str, folder, kind: str = "models"):
        repo = cache / f"{kind}--{repo_id.replace('/', '--')}"
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


def test_info_on_a_hub_id_reads_the_weight_headers_instead_of_the_weights(hub_cache, tiny_model_dir, tmp_path,
                                                                          monkeypatch):
    """`llavatune info llava-hf/llava-1.5-7b-hf` should not download 14 GB: the configs come down, the parameters
    are counted from the safetensors headers the hub serves (here: a fake hub API serving the tiny model's)."""
    import json
    import struct
    import types

    from huggingface_hub import HfApi
    from huggingface_hub.utils import SafetensorsFileMetadata, SafetensorsRepoMetadata, TensorInfo

    from llavatune.info import describe

    def header(file):  # safetensors: 8-byte little-endian length, then a JSON header
        with open(file, "rb") as f:
            return json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))

    def metadata(api, repo_id, revision=None):
        assert (repo_id, revision) == ("someone/tiny-llava", COMMIT)
        files = {file.name: SafetensorsFileMetadata(metadata={}, tensors={
            name: TensorInfo(dtype=t["dtype"], shape=t["shape"], data_offsets=tuple(t["data_offsets"]))
            for name, t in header(file).items() if name != "__metadata__"}) for file in weight_files}
        return SafetensorsRepoMetadata(metadata=None, sharded=False, files_metadata=files,
                                       weight_map={n: f for f, m in files.items() for n in m.tensors})

    def paths_info(api, repo_id, paths, revision=None):
        return [types.SimpleNamespace(path=p, size=(tiny_model_dir / p).stat().st_size) for p in paths]

    weight_files = sorted(tiny_model_dir.glob("*.safetensors"))
    configs_only = tmp_path / "configs-only"
    shutil.copytree(tiny_model_dir, configs_only, ignore=shutil.ignore_patterns("*.safetensors"))
    snapshot = hub_cache("someone/tiny-llava", configs_only)
    with pytest.raises(LlavatuneError, match="someone/tiny-llava: its weights are not in the hub cache, and offline"):
        describe("someone/tiny-llava")  # conftest keeps the tests offline: the real hub API refuses

    import huggingface_hub

    asked, real_download = [], huggingface_hub.snapshot_download
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda *a, **kw: asked.extend(kw["allow_patterns"]) or real_download(*a, **kw))
    monkeypatch.setattr(HfApi, "get_safetensors_metadata", metadata)
    monkeypatch.setattr(HfApi, "get_paths_info", paths_info)
    info, local = describe("someone/tiny-llava"), describe(tiny_model_dir)
    assert info["path"] == str(snapshot) and asked and not [p for p in asked if p.endswith((".safetensors", ".bin"))]
    assert {k: v for k, v in info.items() if k != "path"} == {k: v for k, v in local.items() if k != "path"}


def test_hub_data_is_read_from_the_cache_and_recorded_as_such(hub_cache, tiny_model_dir, shapes_data, tmp_path,
                                                              monkeypatch):
    """data=hf://datasets/ORG/NAME[@REVISION]/PATH, the way huggingface_hub names files: training (on a folder of
    parquet shards) and evaluation read PATH from the hub cache, the run records the reference and the commit (not
    a cache path of this machine), images= may be an archive there, and `data validate` writes its report here,
    not into the cache."""
    import hashlib
    import json

    from conftest import train_config

    from llavatune.data.checks import ValidateConfig
    from llavatune.data.checks import main as validate
    from llavatune.evaluate import EvalConfig
    from llavatune.evaluate import main as evaluate
    from llavatune.train import main as train

    import zipfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    shutil.copy(shapes_data / "qa.json", repo / "data" / "qa.json")
    rows = json.loads((shapes_data / "qa.json").read_text())
    (repo / "shards").mkdir()
    for i, half in enumerate((rows[:20], rows[20:])):  # the same rows as a folder of parquet shards, images inside
        pq.write_table(pa.table({"id": [r["id"] for r in half], "conversations": [r["conversations"] for r in half],
                                 "image": [{"bytes": (shapes_data / r["image"]).read_bytes(), "path": None}
                                           for r in half]}), repo / "shards" / f"train-{i}.parquet")
    with zipfile.ZipFile(repo / "images.zip", "w") as z:  # LLaVA-Pretrain's layout: the images in one archive
        for file in sorted((shapes_data / "images").iterdir()):
            z.write(file, f"images/{file.name}")
    shutil.copytree(shapes_data / "images", repo / "pics" / "images")  # or a folder of image files
    hub_cache("someone/shapes", repo, kind="datasets")
    ref = "hf://datasets/someone/shapes/shards/train-*.parquet"  # a split's shards, as the hub names them
    final = train(train_config(tiny_model_dir, shapes_data, tmp_path / "run", f"data={ref}", "steps=1",
                               "save_every=0"))
    recorded = yaml.safe_load((final / "run_config.yaml").read_text())["data"]
    sha = hashlib.sha256(b"".join((repo / "shards" / f"train-{i}.parquet").read_bytes() for i in (0, 1)))
    assert recorded == {"file": ref, "revision": COMMIT, "sha256": sha.hexdigest(), "rows": len(rows)}

    ref = "hf://datasets/someone/shapes/data/qa.json"
    pinned = f"hf://datasets/someone/shapes@{COMMIT}/data/qa.json"
    evaluate(EvalConfig(model=tiny_model_dir, data=pinned, images=shapes_data, limit=3, max_new_tokens=2,
                        out=tmp_path / "eval"))
    assert [json.loads(line)["id"] for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()] \
        == [r["id"] for r in rows[:3]]

    from llavatune.data import tools
    assert len(tools.mix([ref, f"{ref}:0.5"], seed=0)) == 60  # `data mix` weights: not the ':' of 'hf:'

    for images in ("hf://datasets/someone/shapes/images.zip", "hf://datasets/someone/shapes/pics"):
        report = validate(ValidateConfig(data=ref, images=images))
        assert report.rows == 40 and not report.problems
    report = validate(ValidateConfig(data="hf://datasets/someone/shapes/shards/train-1*.parquet"))  # one split's
    assert report.rows == 20 and not report.problems                                                  # shards

    monkeypatch.chdir(tmp_path)  # no images= and the images are not here: every row has a problem
    with pytest.raises(LlavatuneError, match=r"rows have problems; see qa.json.errors.txt"):
        validate(ValidateConfig(data=ref))
    assert (tmp_path / "qa.json.errors.txt").read_text().startswith(f"{ref}:1: image missing")
    with pytest.raises(LlavatuneError, match=r"hf://datasets/someone/shapes/data/qb.json: the hub dataset "
                                             r"someone/shapes has no file or folder 'data/qb.json'"):
        validate(ValidateConfig(data="hf://datasets/someone/shapes/data/qb.json"))
    with pytest.raises(LlavatuneError, match=r"hf://datasets/someone/absent/qa.json: the Hugging Face hub did not "
                                             r"provide it \(.*\)\. Check the id"):
        validate(ValidateConfig(data="hf://datasets/someone/absent/qa.json"))


def test_a_hub_split_comes_down_shard_by_shard_as_it_is_read(hub_cache, tiny_model_dir, tmp_path, monkeypatch):
    """`eval --limit 3` on 'hf://datasets/ORG/NAME/data/validation-*.parquet' downloads the first shard, not the
    split (VQAv2's validation is tens of GB): the shards are listed at one commit and each comes down when the rows
    reach it, numbered on from one shard to the next; offline, the cache is read as before."""
    import fnmatch
    import types
    from pathlib import Path

    import huggingface_hub
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import HfApi

    from llavatune.data.formats import read_records
    from llavatune.evaluate import EvalConfig, samples

    remote = tmp_path / "remote"  # the repository on the hub
    (remote / "data").mkdir(parents=True)
    for split, count in (("validation", 3), ("test", 1)):
        for k in range(count):
            rows = [{"question": f"{split} {k}.{i}?", "answer": "yes"} for i in range(4)]
            pq.write_table(pa.Table.from_pylist(rows), remote / "data" / f"{split}-{k:05d}-of-{count:05d}.parquet")
    for subject in ("Math", "Art"):  # MMMU's layout: a folder per subject
        (remote / subject).mkdir()
        pq.write_table(pa.Table.from_pylist([{"question": f"{subject}?", "answer": "yes"}]),
                       remote / subject / "validation-00000-of-00001.parquet")
    (remote / "README.md").write_text("a dataset card")
    files = sorted(f.relative_to(remote).as_posix() for f in remote.rglob("*") if f.is_file())
    fetched = []

    def download(repo_id, repo_type=None, revision=None, allow_patterns=(), local_files_only=False, **kwargs):
        repo = Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}"
        folder = repo / "snapshots" / COMMIT
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / (revision or "main")).write_text(COMMIT)  # as huggingface_hub records a branch's commit
        for name in files:
            if any(fnmatch.fnmatchcase(name, p) for p in allow_patterns) and not (folder / name).exists():
                fetched.append(name)
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(remote / name, folder / name)
        return str(folder)

    real_download = huggingface_hub.snapshot_download
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    monkeypatch.setattr(HfApi, "dataset_info", lambda api, repo_id, revision=None, **kw: types.SimpleNamespace(
        sha=COMMIT, siblings=[types.SimpleNamespace(rfilename=name) for name in files]))
    ref = "hf://datasets/someone/bench/data/validation-*.parquet"
    items = samples(EvalConfig(model=tiny_model_dir, data=ref, out=tmp_path / "out", limit=3))
    assert [s.question_turns[0][1] for s in items] == ["validation 0.0?", "validation 0.1?", "validation 0.2?"]
    assert fetched == ["data/validation-00000-of-00003.parquet"]
    records = list(read_records(ref))
    assert [r.source for r in records[3:5]] == [f"{ref}:4", f"{ref}:5"] and records[-1].source == f"{ref}:12"
    assert [r.turns[0][1] for r in records[3:5]] == ["validation 0.3?", "validation 1.0?"]
    assert fetched == [f"data/validation-{k:05d}-of-00003.parquet" for k in range(3)]  # not the test split, nor README
    assert len(list(read_records("hf://datasets/someone/bench/data"))) == 16  # a folder: every table in it
    subjects = [r.turns[0][1] for r in read_records("hf://datasets/someone/bench/*/validation-*.parquet")]
    assert subjects[:2] == ["Art?", "Math?"] and len(subjects) == 2 + 12  # and data/'s validation shards

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # offline: what the cache holds, found by the pattern
    monkeypatch.setattr(huggingface_hub, "snapshot_download", real_download)
    hub.data_shards.cache_clear()
    hub.data_path.cache_clear()
    assert [r.turns for r in read_records(ref)] == [r.turns for r in records]


def test_a_whole_dataset_is_not_data_and_its_error_lists_the_splits_to_pick(hub_cache, tmp_path, monkeypatch):
    """'hf://datasets/ORG/NAME' (what the hub page shows) read as the local folder 'hf:/datasets/ORG/NAME', 'file not
    found'. Which split to read is the user's choice: the error names them as patterns, or the hub page offline. A
    listing that fails on the network (httpx2's ConnectError, not a hub error) leaves the download to say why."""
    import types
    from pathlib import PurePosixPath

    from huggingface_hub import HfApi

    from llavatune.data.checks import ValidateConfig
    from llavatune.data.checks import main as validate

    monkeypatch.chdir(tmp_path)  # where the errors of hub data are reported
    names = ["README.md", "qa.json", "data/test-00000-of-00002.parquet", "data/test-00001-of-00002.parquet",
             "Art/validation-00000-of-00001.parquet", "Math/validation-00000-of-00001.parquet"]
    assert hub.split_patterns([PurePosixPath(n) for n in names]) == [
        "qa.json", "data/test-*.parquet", "*/validation-*.parquet"]
    with pytest.raises(LlavatuneError, match=r"^hf://datasets/someone/bench names a whole dataset: .* for example "
                       r"hf://datasets/someone/bench/data/validation-\*.parquet \(its files: https://huggingface.co/"
                       r"datasets/someone/bench/tree/main\)\.$"):
        validate(ValidateConfig(data="hf://datasets/someone/bench"))  # offline
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "dataset_info", lambda api, repo_id, revision=None, **kw: types.SimpleNamespace(
        siblings=[types.SimpleNamespace(rfilename=name) for name in names]))
    with pytest.raises(LlavatuneError, match=r"for example hf://datasets/someone/bench/qa.json; its data files: "
                                             r"qa.json, data/test-\*.parquet, \*/validation-\*.parquet\.$"):
        validate(ValidateConfig(data="hf://datasets/someone/bench/"))

    class ConnectError(Exception):
        pass

    def offline(api, repo_id, revision=None, **kw):
        raise ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(HfApi, "dataset_info", offline)
    assert hub.data_shards("hf://datasets/someone/bench/data") is None
    with pytest.raises(LlavatuneError, match=r"for example hf://datasets/someone/bench/data/validation"):
        validate(ValidateConfig(data="hf://datasets/someone/bench"))
    assert not list(tmp_path.iterdir())  # no report of data that was never read


def test_the_python_api_refuses_an_output_on_the_hub_too(tmp_path, monkeypatch):
    """The CLI checks --out; a config made in Python (a notebook's EvalConfig(out=...)) is checked on its own."""
    from llavatune import build, merge
    from llavatune.bench import BenchConfig
    from llavatune.data.synth import SynthConfig
    from llavatune.demo import DemoConfig
    from llavatune.evaluate import EvalConfig

    monkeypatch.chdir(tmp_path)
    out = "hf://datasets/me/x"
    made = [lambda: EvalConfig(model="m", data="d.json", out=out), lambda: DemoConfig(out=out),
            lambda: SynthConfig(out=out), lambda: BenchConfig(out=out),
            lambda: build.main(build.BuildConfig(preset="tiny", out=out)),
            lambda: merge.main(merge.MergeConfig(run="nowhere", out=out))]
    for make in made:
        with pytest.raises(LlavatuneError, match="outputs are written here, not to the hub"):
            make()
    assert not (tmp_path / "hf:").exists()
