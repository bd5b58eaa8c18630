"""A complete run is shared by readers (parallel compares against one base); writers exclude."""

from __future__ import annotations

import pytest

from harness.errors import StoreError
from harness.store import RunStore
from harness.types import Loglik


def test_complete_store_is_shared_by_readers_and_writes_need_it_alone(tmp_path):
    folder = tmp_path / "run"
    with RunStore.open(folder, {"k": 1}) as s:
        s.append("ll", [("a", Loglik(-1.0, True, 1))])
        s.write_records([])
        with pytest.raises(StoreError, match="in use"):  # incomplete-at-open writer excludes everyone
            RunStore.open(folder, {"k": 1})
    first = RunStore.open(folder, {"k": 1})
    second = RunStore.open(folder, {"k": 1})  # a second reader of the complete run is welcome
    assert first.answers("ll")["a"].logprob == -1.0
    with pytest.raises(StoreError, match="being read by another run"):
        first.append("ll", [("b", Loglik(-2.0, False, 1))])
    second.close()
    first.append("ll", [("b", Loglik(-2.0, False, 1))])  # alone now: the lock is upgraded
    with pytest.raises(StoreError, match="in use"):
        RunStore.open(folder, {"k": 1})
    first.close()
