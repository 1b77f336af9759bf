"""The embedding tests' image trees are the same in every process: no seed from ``hash()``,
which changes with hash randomisation and once made two files identical (deduplicated to one)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from support.embed_support import write_tree

TREE = {"parks": ["green"] * 12 + ["orange"] * 12, "streets": ["orange"] * 12 + ["blue"] * 12}
SCRIPT = """
import hashlib, sys, tempfile
from pathlib import Path
from support.embed_support import write_tree
root = write_tree(Path(tempfile.mkdtemp()), {tree!r})
for p in sorted(root.rglob("*.jpg")):
    print(p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest())
"""


def _digests(hash_seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT.format(tree=TREE)], env=env, capture_output=True, text=True, check=True
    ).stdout


def test_trees_do_not_depend_on_hash_randomisation() -> None:
    assert _digests("1") == _digests("2")


def test_every_file_of_a_tree_is_a_distinct_image(tmp_path: Path) -> None:
    root = write_tree(tmp_path, TREE)
    files = sorted(root.rglob("*.jpg"))
    assert len(files) == 48
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in files}) == 48
