"""A result says whether the tree it ran from had uncommitted changes to tracked files."""

from __future__ import annotations

import subprocess
from pathlib import Path

from app.ml.bench.report import write_results
from app.ml.common.provenance import git_dirty, provenance


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                   capture_output=True)


def test_a_tree_with_changed_tracked_files_is_dirty_and_new_outputs_do_not_count(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "model.py").write_text("x = 1\n")
    _git(tmp_path, "add", "model.py")
    _git(tmp_path, "commit", "-q", "-m", "one")
    assert git_dirty(tmp_path) is False
    (tmp_path / "results.json").write_text("{}")  # a bench's own output, not yet committed
    assert git_dirty(tmp_path) is False
    (tmp_path / "model.py").write_text("x = 2\n")
    assert git_dirty(tmp_path) is True


def test_outside_git_nothing_is_claimed(tmp_path: Path) -> None:
    assert git_dirty(tmp_path / "nowhere") is None


def test_the_results_footer_names_uncommitted_changes(tmp_path: Path) -> None:
    prov = {**provenance(), "git_hash": "a" * 40, "git_dirty": True}
    write_results(tmp_path, suite="s", command="c", config={}, results={}, markdown="m", prov=prov)
    assert f"({'a' * 40} + uncommitted changes)" in (tmp_path / "results.md").read_text()
    write_results(tmp_path, suite="s", command="c", config={}, results={}, markdown="m",
                  prov={**prov, "git_dirty": False})
    assert f"({'a' * 40})," in (tmp_path / "results.md").read_text()


def test_the_cpu_and_the_kernels_torch_picked_are_recorded(tmp_path: Path) -> None:
    """The same seed trains bit-identical weights in two processes on one host, and other weights on another
    (forgetting-small seed 0: train accuracy 0.963 in one session's run, 0.956 in the next): a result names both."""
    import torch

    m = provenance()["machine"]
    assert m["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and m["cpu_capability"]
    write_results(tmp_path, suite="s", command="c", config={}, results={}, markdown="m", prov=provenance())
    assert f"{m['cpu_capability']})" in (tmp_path / "results.md").read_text()
