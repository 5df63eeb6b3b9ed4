"""The tiny parts are the same in every process: the demo's numbers and the tests' expectations rest on it."""

from __future__ import annotations

import subprocess
import sys

CODE = ("from llavatune.model.tiny import tiny_tokenizer\n"
        "for style in ('llama', 'qwen'): print(tiny_tokenizer(style)._tokenizer.to_str())")


def test_tiny_tokenizer_is_identical_across_processes():
    """Each process trains both styles anew; tokenizers' Unigram trainer sums in hash-map order (random per
    process), which once gave different token ids in different runs."""
    runs = [subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert len(runs[0].splitlines()) == 2 and runs[0] == runs[1]
