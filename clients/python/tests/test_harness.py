"""The README's command runs from `clients/python`: `APV_BIN=target/debug/approvals pytest
tests` names the binary relative to the repository's root. Before, the relative path was used
as given, from directories where it names nothing (the service starts in a temporary one)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import REPO, approvals_bin


def test_a_relative_apv_bin_is_found_from_the_client_or_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    binary = Path(approvals_bin())
    assert binary.is_absolute() and binary.is_file()
    from_root = os.path.relpath(binary, REPO)  # `target/debug/approvals` in a plain checkout
    for directory in (REPO / "clients" / "python", REPO):
        monkeypatch.chdir(directory)
        monkeypatch.setenv("APV_BIN", from_root)
        assert Path(approvals_bin()) == binary
    # Relative to the current directory, when it names a file there.
    monkeypatch.chdir(binary.parent)
    monkeypatch.setenv("APV_BIN", binary.name)
    assert Path(approvals_bin()) == binary
