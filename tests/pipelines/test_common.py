"""`pipelines.common.open_run_dir`: what a run directory holds is checked before a byte is
written; each refusal leaves every existing file unchanged (hashed before and after)."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from jaxdiff.checkpoint import RUN_CONTROL_KEYS
from jaxdiff.errors import UserError
from jaxdiff.pipelines.common import RunDirError, config_changes, open_run_dir
from jaxdiff.specs.base import Resolution


def _resolution(command="distill", resumable=True, safe=(), **config):
    config = {"ipc": 1, "loss": {"name": "dm", "batch_real": 8}, "iterations": 10,
              "num_devices": 0, "run_dir": "x", **config}
    return Resolution(command, (), config, "f", ("f",),
                      RUN_CONTROL_KEYS + ("num_devices",) + safe, resumable)


def _digest(path) -> str:
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


@pytest.fixture
def earlier(tmp_path):
    """A directory holding a distill run: config.json and a result file."""
    d = tmp_path / "run"
    open_run_dir(str(d), _resolution())
    (d / "results.json").write_text("{}")
    return d


@pytest.mark.parametrize("command, resume, over, error, words", [
    ("distill", False, {}, RunDirError, "already holds a distill run; pass --resume"),
    ("train-denoiser", True, {}, RunDirError, "holds a `jaxdiff distill` run, not a train-denoiser"),
    ("distill", True, {"ipc": 2}, UserError, "ipc: 1 -> 2"),
    ("distill", True, {"loss": {"name": "dc", "batch_real": 8}}, UserError, "loss.name: 'dm' -> 'dc'"),
    ("evaluate", False, {}, RunDirError, "holds a `jaxdiff distill` run"),
])
def test_refusals_leave_the_directory_unchanged(earlier, command, resume, over, error, words):
    before = _digest(earlier)
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        open_run_dir(str(earlier), _resolution(command, **over), resume=resume)
    assert _digest(earlier) == before


def test_resume_where_there_is_no_run_writes_nothing(tmp_path):
    with pytest.raises(UserError, match="holds no distill run to continue.*without --resume"):
        open_run_dir(str(tmp_path / "missing"), _resolution(), resume=True)
    assert not (tmp_path / "missing").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        open_run_dir(str(tmp_path / "file"), _resolution())


def test_a_resume_may_change_only_the_safe_keys(earlier):
    open_run_dir(str(earlier), _resolution(iterations=20, num_devices=4), resume=True)
    with open(earlier / "config.json") as f:
        assert json.load(f)["config"]["iterations"] == 20          # recorded, not refused
    # a command's own safe keys (select: methods) may change too, others may not
    open_run_dir(str(earlier), _resolution(safe=("loss.batch_real",),
                                           loss={"name": "dm", "batch_real": 16}), resume=True)


def test_commands_that_do_not_resume_write_their_own_directory_again(tmp_path):
    d = str(tmp_path / "ev")
    open_run_dir(d, _resolution("evaluate", resumable=False))
    open_run_dir(d, _resolution("evaluate", resumable=False, ipc=3))


def test_config_changes_name_added_removed_and_nested_keys():
    old = {"a": 1, "b": {"c": [1, 2], "d": "x"}, "gone": 0}
    new = {"a": 1, "b": {"c": [1, 3], "d": "x"}, "added": 5}
    changed = {k: (o, n) for k, o, n in config_changes(old, new, ())}
    assert set(changed) == {"b.c", "gone", "added"} and changed["b.c"] == ([1, 2], [1, 3])
    assert [k for k, *_ in config_changes(old, new, ("b", "gone", "added"))] == []


def test_cli_refusal_is_one_line_exit_2_and_writes_nothing(earlier):
    before = _digest(earlier)
    out = subprocess.run([sys.executable, "-m", "jaxdiff.cli", "evaluate", "--config",
                          "evaluate_digits", f"--config.run_dir={earlier}"],
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, JAX_PLATFORMS="cpu", JAXDIFF_REUSE_HEAP="0"))
    assert out.returncode == 2, out.stderr[-2000:]
    assert "holds a `jaxdiff distill` run" in out.stderr and "Traceback" not in out.stderr
    assert _digest(earlier) == before
