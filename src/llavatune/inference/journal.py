"""Answers written down as they come, so that a killed evaluation continues where it stopped.

An evaluation of a big set (VQAv2's 107k questions) answers for hours. Each process appends its answers to its own
file, `OUT/.answers-<label>-<fingerprint>/rank<R>.jsonl`, a line per question: {"i": position in the set, "text",
"finish_reason"}. A rerun with the same fingerprint (the same model files, data, questions and options) reads
them back and answers only the rest, on any number of processes. Anything else changed gives another fingerprint,
and the answers start from nothing. The folder goes once the results are written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path


class Journal:
    def __init__(self, out: Path, label: str, fingerprint: str, rank: int = 0):
        self.folder = Path(out) / f".answers-{label}-{fingerprint}"
        self.label, self.rank = label, rank
        self._file = None

    def done(self) -> dict[int, dict]:
        """{position: {"text", "finish_reason"}} of every answer written by any process of this or an earlier
        run; a line cut short by a kill is passed over (that question is asked again)."""
        found: dict[int, dict] = {}
        for path in sorted(self.folder.glob("rank*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                found[row["i"]] = {"text": row["text"], "finish_reason": row["finish_reason"]}
        return found

    def add(self, i: int, text: str, finish_reason: str) -> None:
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"rank{self.rank}.jsonl"
            cut = _cut_short(path)
            self._file = path.open("a", encoding="utf-8")
            if cut:
                self._file.write("\n")  # after a line a kill cut short: the next one starts on its own
        row = {"i": i, "text": text, "finish_reason": finish_reason}
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()  # in the file when the process is killed, a batch at most lost

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove_all(self) -> None:
        """This label's journals, this run's and those of other fingerprints left in the folder."""
        self.close()
        for folder in self.folder.parent.glob(f".answers-{self.label}-*"):
            shutil.rmtree(folder, ignore_errors=True)


def _cut_short(path: Path) -> bool:
    """The file ends in a line without its line break (a kill while it was written)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1) != b"\n"


def fingerprint(*parts) -> str:
    """A short hash of what the answers depend on (options, questions, model files' sizes and times)."""
    digest = hashlib.sha1()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str, ensure_ascii=False).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def files_stamp(folder: Path | None) -> list:
    """(name, size, time of change) of a model folder's weights and configs: a retrained model at the same path
    gives another fingerprint."""
    if folder is None or not Path(folder).is_dir():
        return []
    return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(Path(folder).iterdir())
            if f.suffix in (".safetensors", ".bin", ".json", ".pt")]
