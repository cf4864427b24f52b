"""Whole-file writes, reads of regular files only, and the clean-up of killed writers' files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from swarmpilot_predictor.atomic import (
    NotRegularFile,
    atomic_file,
    atomic_write_bytes,
    make_folder,
    read_regular,
    remove_stale_temps,
    sync_folder,
    temp_beside,
)

from .conftest import record_fsyncs


def test_a_write_replaces_the_file_whole_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "model.json"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new content")
    assert path.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "model.json"
    atomic_write_bytes(path, b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as fh:
            fh.write(b"half of the new")
            raise RuntimeError("the writer failed midway")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]


def test_a_temporary_name_fits_the_file_system_however_long_the_name(tmp_path):
    long_name = "é" * 127  # 254 bytes in UTF-8
    fd, tmp = temp_beside(tmp_path / long_name)
    os.close(fd)
    name = Path(tmp).name
    assert len(os.fsencode(name)) <= 255 and name.startswith(".") and name.endswith(".tmp")
    assert Path(tmp).parent == tmp_path


def test_only_regular_files_are_read(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"0123456789")
    assert read_regular(path) == b"0123456789" and read_regular(path, 4) == b"0123"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFile):  # at once: opened without blocking, refused before a read
        read_regular(fifo)
    link = tmp_path / "zeros"
    link.symlink_to("/dev/zero")
    with pytest.raises(NotRegularFile):
        read_regular(link)
    with pytest.raises(NotRegularFile):
        read_regular(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "missing")


def test_only_old_temporary_files_are_removed(tmp_path):
    old = tmp_path / ".v0001.model.json.abcdefgh.tmp"
    fresh = tmp_path / ".v0002.model.json.abcdefgh.tmp"
    kept = [tmp_path / "v0001.model.json", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for p in (old, fresh, *kept):
        p.write_bytes(b"x")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    (tmp_path / ".dir.tmp").mkdir()  # not a file: left
    assert remove_stale_temps(tmp_path, older_than=600) == 1
    assert not old.exists() and fresh.exists() and all(p.exists() for p in kept)
    assert remove_stale_temps(tmp_path / "missing") == 0


def test_a_write_syncs_its_folder_once_the_new_name_is_in_place(tmp_path, monkeypatch):
    # A file's fsync keeps its bytes, not its name: after a power loss the rename could be
    # gone, or there before the bytes it names.
    path = tmp_path / "model.json"
    atomic_write_bytes(path, b"old")
    fsyncs = record_fsyncs(monkeypatch)
    atomic_write_bytes(path, b"new")
    assert len(fsyncs) == 2
    assert fsyncs[0].path.parent == tmp_path and fsyncs[0].path.name.endswith(".tmp") and fsyncs[0].names is None
    assert fsyncs[1].path == tmp_path and fsyncs[1].names == {"model.json"}  # renamed: no temporary name left
    assert path.read_bytes() == b"new"


def test_a_new_folder_is_synced_in_its_parent_and_an_existing_one_is_left(tmp_path, monkeypatch):
    fsyncs = record_fsyncs(monkeypatch)
    make_folder(tmp_path / "models")
    assert [(f.path, f.names) for f in fsyncs] == [(tmp_path, frozenset({"models"}))]
    make_folder(tmp_path / "models")
    assert len(fsyncs) == 1 and (tmp_path / "models").is_dir()
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(FileExistsError):
        make_folder(tmp_path / "file")
    with pytest.raises(FileNotFoundError):  # not its parents
        make_folder(tmp_path / "missing" / "models")


def test_a_folder_its_file_system_cannot_sync_is_left_as_it_is():
    sync_folder("/proc/self")  # procfs answers a folder's fsync with EINVAL, as some FUSE and network ones do
    with pytest.raises(NotADirectoryError):
        sync_folder("/proc/self/status")


def test_a_temporary_file_dated_in_the_future_is_stale_as_an_old_one_is(tmp_path):
    # A killed writer's, of a host whose clock was an hour ahead (or this one's set back since):
    # its age was negative, and it stayed, start after start, until the clock caught up.
    ahead = tmp_path / ".v0001.data.npz.abcdefgh.tmp"
    near = tmp_path / ".v0002.data.npz.abcdefgh.tmp"  # a few minutes ahead: a writer at work
    for p, seconds in ((ahead, 3600), (near, 300)):
        p.write_bytes(b"x")
        os.utime(p, (time.time() + seconds, time.time() + seconds))
    assert remove_stale_temps(tmp_path, older_than=600) == 1
    assert not ahead.exists() and near.exists()
