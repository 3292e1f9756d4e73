"""The job queue without HTTP: what recover() does with each kind of interrupted job, failures, out-of-memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from boothkit.app.jobs import MAX_ATTEMPTS, JobRunner
from boothkit.app.registry import MethodSpec
from boothkit.app.storage import NameTaken, Store
from test_app_support import standin_methods


def _job(store: Store, name: str, method: str = "standin", steps: int = 4, config=None) -> dict:
    jid = store.new_job_id()
    (store.job_dir(jid) / "refs").mkdir(parents=True)
    return store.add_job(jid, concept=name, method=method, class_noun="rat", model="world", steps=steps,
                         n_images=1, config=config)


def _interrupt(store: Store, job: dict, step: int = 2, total: int = 4) -> dict:
    """Make `job` look like a stopped server left it running at step/total."""
    claimed = store.claim_next_job()
    assert claimed["id"] == job["id"]
    store.set_progress(job["id"], step, total)
    return store.get_job(job["id"])


def test_run_job_done_and_progress(tmp_path):
    store = Store(tmp_path)
    runner = JobRunner(store, standin_methods(0), "world")
    job = _job(store, "a", config={"rank": 2})
    runner.run_job(store.claim_next_job())
    done = store.get_job(job["id"])
    assert done["status"] == "done" and (done["progress_step"], done["progress_total"]) == (4, 4)
    meta = json.loads((store.concept_dir("a") / "concept.json").read_text())
    assert meta["config"] == {"rank": 2} and meta["resumed_from"] == 0
    assert not store.job_dir(job["id"]).exists()  # the job's scratch folder is cleaned up
    assert [c["name"] for c in store.list_concepts()] == ["a"]
    with pytest.raises(NameTaken):
        _job(store, "a")


def test_recover_resumable_job_is_requeued_and_resumes(tmp_path):
    store = Store(tmp_path)
    methods = standin_methods(0)
    job = _interrupt(store, _job(store, "r", steps=6), 3, 6)
    # the stand-in's checkpoint from the first attempt
    (store.job_dir(job["id"]) / "standin-checkpoint.json").write_text(json.dumps({"step": 3}))
    runner = JobRunner(store, methods, "world")
    [after] = runner.recover()
    assert after["status"] == "queued" and after["resume"] == 1
    assert after["note"] == "interrupted at step 3/6 by a server stop; resumed from its last checkpoint (attempt 2)"
    runner.run_job(store.claim_next_job())
    assert store.get_job(job["id"])["status"] == "done" and store.get_job(job["id"])["attempts"] == 2
    assert json.loads((store.concept_dir("r") / "concept.json").read_text())["resumed_from"] == 3


def test_recover_fails_what_cannot_resume(tmp_path):
    store = Store(tmp_path)
    nr = _interrupt(store, _job(store, "nr", method="standin-noresume"))
    gone = _interrupt(store, _job(store, "gone", method="removed-method"))
    runner = JobRunner(store, standin_methods(0), "world")
    runner.recover()
    assert store.get_job(nr["id"])["status"] == "failed"
    assert store.get_job(nr["id"])["error"] == ("interrupted at step 2/4 by a server stop; method "
                                                "'standin-noresume' cannot resume from a checkpoint")
    assert "'removed-method' is not available" in store.get_job(gone["id"])["error"]
    assert store.name_taken("nr") is None  # a failed job frees its name


def test_recover_gives_up_after_max_attempts(tmp_path):
    store = Store(tmp_path)
    job = _job(store, "crashy")
    for _ in range(MAX_ATTEMPTS):
        _interrupt(store, job)
        JobRunner(store, standin_methods(0), "world").recover()
    after = store.get_job(job["id"])
    assert after["status"] == "failed" and f"{MAX_ATTEMPTS} times; not retried again" in after["error"]


def test_recover_records_a_concept_finished_on_disk(tmp_path):
    """Stopped between moving the finished folder into the library and committing the row: the row is added."""
    store = Store(tmp_path)
    job = _interrupt(store, _job(store, "almost"))
    store.concept_dir("almost").mkdir()
    (store.concept_dir("almost") / "concept.json").write_text("{}")
    JobRunner(store, standin_methods(0), "world").recover()
    assert store.get_job(job["id"])["status"] == "done"
    assert [c["name"] for c in store.list_concepts()] == ["almost"]


def _raising(exc):
    def tune(*a, **k):
        raise exc

    return {"boom": MethodSpec("boom", tune, lambda p, d: p)}


def test_failures_are_recorded_and_the_worker_goes_on(tmp_path):
    import torch

    store = Store(tmp_path)
    for exc, words in [(ValueError("photo 'x.png' is too small"), "ValueError: photo 'x.png' is too small"),
                       (torch.OutOfMemoryError("CUDA out of memory"), "out of memory while training")]:
        job = _job(store, "boom-" + str(len(words)), method="boom")
        JobRunner(store, _raising(exc), "world").run_job(store.claim_next_job())
        after = store.get_job(job["id"])
        assert after["status"] == "failed" and words in after["error"]


def test_a_method_that_writes_no_concept_json_fails_the_job(tmp_path):
    store = Store(tmp_path)

    def tune(images, noun, out, **k):
        Path(out).mkdir()
        return out

    job = _job(store, "empty", method="bad")
    JobRunner(store, {"bad": MethodSpec("bad", tune, lambda p, d: p)}, "world").run_job(store.claim_next_job())
    assert "without a concept.json" in store.get_job(job["id"])["error"]
    assert store.list_concepts() == []


def test_worker_threads_drain_the_queue(tmp_path):
    import time

    store = Store(tmp_path)
    jobs = [_job(store, f"q{i}") for i in range(3)]
    runner = JobRunner(store, standin_methods(0), "world", workers=2)
    runner.start()
    runner.notify()
    deadline = time.time() + 30
    while time.time() < deadline and any(store.get_job(j["id"])["status"] != "done" for j in jobs):
        time.sleep(0.05)
    runner.stop()
    assert [store.get_job(j["id"])["status"] for j in jobs] == ["done"] * 3
    assert sorted(c["name"] for c in store.list_concepts()) == ["q0", "q1", "q2"]
