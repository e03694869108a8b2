import os
import subprocess
import sys
import time

from pipeline.worker.txnid import claim_transactional_id

HOLD = """
import sys, time
from pathlib import Path
from pipeline.worker.txnid import claim_transactional_id
slot = claim_transactional_id(sys.argv[1], Path(sys.argv[2]))
print(slot.transactional_id, flush=True)
time.sleep(60)
"""


def test_workers_side_by_side_get_distinct_ids_and_a_released_slot_is_reused(tmp_path):
    a = claim_transactional_id("g 1/x", tmp_path)
    b = claim_transactional_id("g 1/x", tmp_path)
    other = claim_transactional_id("other", tmp_path)
    assert (a.slot, b.slot, other.slot) == (0, 1, 0)
    assert a.transactional_id.startswith("g 1/x-") and a.transactional_id.endswith("-0")
    a.release()
    again = claim_transactional_id("g 1/x", tmp_path)
    assert again.transactional_id == a.transactional_id  # a restart gets the id back
    for slot in (b, other, again):
        slot.release()


def test_a_killed_process_frees_its_slot_for_its_successor(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, "grp", str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        held = proc.stdout.readline().strip()
        assert held.endswith("-0")
        taken = claim_transactional_id("grp", tmp_path)
        assert taken.slot == 1  # still alive: its slot is taken
        taken.release()
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 10
        while (slot := claim_transactional_id("grp", tmp_path)).slot != 0:
            slot.release()
            assert time.monotonic() < deadline
        assert slot.transactional_id == held
        slot.release()
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


def test_an_unusable_lock_dir_falls_back_to_a_pid_id(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    slot = claim_transactional_id("g", blocker / "sub")
    assert slot.slot == -1 and slot.transactional_id.endswith(f"-pid{os.getpid()}")
    slot.release()
