"""Atomic small-file writes (boothkit.fileio): the old file or the whole new one, never a torn one."""

from __future__ import annotations

import json
import os

import pytest

from boothkit.fileio import write_json_atomic, write_text_atomic


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "DONE.json"
    write_json_atomic(path, {"step": 1})
    assert json.loads(path.read_text()) == {"step": 1} and (path.stat().st_mode & 0o777) == 0o644
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})  # fails while serialising: the old file stays
    assert json.loads(path.read_text()) == {"step": 1}

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)  # fails after the text is written to the temporary file
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(path, '{"step": 2}')
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"step": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["DONE.json"]  # no temporary left behind
