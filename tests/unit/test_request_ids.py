"""Request ids: the idempotency key of every request, drawn ahead in blocks."""

from __future__ import annotations

import os
import re

import pytest

from fleet.contract import new_request_id

pytestmark = pytest.mark.unit


def test_ids_are_32_hex_digits_and_never_repeat() -> None:
    ids = [new_request_id() for _ in range(20_000)]  # many blocks
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_does_not_reuse_the_parents_ids() -> None:
    new_request_id()  # the parent holds a block drawn ahead
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out
        os.write(write, "".join(new_request_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child = os.read(read, 4096).decode()
    os.close(read)
    assert status == 0
    parent = {new_request_id() for _ in range(300)}
    theirs = {child[i : i + 32] for i in range(0, len(child), 32)}
    assert len(theirs) == 8 and not theirs & parent
