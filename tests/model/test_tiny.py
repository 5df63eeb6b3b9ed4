"""The tiny parts are the same in every process: the demo's numbers and the tests' expectations rest on it."""

from __future__ import annotations

import subprocess
import sys

import pytest

CODE = "from llavatune.model.tiny import tiny_tokenizer; print(tiny_tokenizer({style!r})._tokenizer.to_str())"


@pytest.mark.parametrize("style", ["llama", "qwen"])
def test_tiny_tokenizer_is_identical_across_processes(style):
    """Each process trains it anew; tokenizers' Unigram trainer sums in hash-map order (random per process),
    which once gave different token ids in different runs."""
    runs = [subprocess.run([sys.executable, "-c", CODE.format(style=style)], capture_output=True, text=True,
                           check=True).stdout for _ in range(2)]
    assert runs[0] and runs[0] == runs[1]
