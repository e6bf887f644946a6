"""The store of measured runs on SQLite (the default): records, migrations, concurrency, crash safety,
export/import, `advise record` / `advise history`, and calibration of `advise` from a record."""
from __future__ import annotations

import json
import signal
import sqlite3
import time

import pytest
import yaml

from memfit.cli.main import main
from memfit.engine import advise, estimate, plan_from_dict
from memfit.engine.core.errors import StoreError
from memfit.engine.store.open import default_path, open_store, store_url
from memfit.engine.store.record import MeasurementRecord
from memfit.engine.store.sql import MIGRATIONS, SCHEMA_VERSION

from conftest import ROOT
from store_helpers import MiB, published_record, writer

LOGS = ROOT / "tests" / "fixtures" / "logs"
GIB = 2**30


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _mistral_plan(**training) -> dict:
    t = {"method": "full", "seq_len": 2048, "precision": "pure_bf16", "gradient_checkpointing": True,
         "zero_stage": 0, "offload_optimizer": "none", "offload_param": "none", **training}
    return {"model": "mistralai/Mistral-7B-v0.1", "hardware": {"gpu_memory": 80, "host_memory": 256}, "training": t}


def test_default_store_is_under_the_xdg_data_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("MEMFIT_STORE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert store_url() == f"sqlite:///{tmp_path}/memfit/store.sqlite"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_path().parts[-4:] == (".local", "share", "memfit", "store.sqlite")


def test_a_record_round_trips_and_is_stored_once(tmp_path):
    rec = MeasurementRecord.model_validate({**published_record(), "model_key": "k"})
    with open_store(str(tmp_path / "s.sqlite")) as store:
        first, second = store.add(rec), store.add(rec)
        stored = store.records()
    assert first == (1, True) and second == (1, False)
    assert [s.record for s in stored] == [rec]
    assert rec.gpu_peak_gib == pytest.approx(77_705 / 1024)  # NVML used, the largest reading, in GiB


def test_the_store_is_in_wal_mode_at_the_current_schema(tmp_path):
    path = tmp_path / "s.sqlite"
    with open_store(str(path)) as store:
        assert store.schema_version() == SCHEMA_VERSION
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_older_store_is_migrated_and_keeps_its_records(tmp_path):
    # A store as schema version 1 left it: no lookup index yet.
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE memfit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for statement in MIGRATIONS[0]:
        conn.execute(statement.replace("{id}", "INTEGER PRIMARY KEY"))
    body = json.dumps({**published_record(), "model_key": "k"})
    conn.execute("INSERT INTO memfit_records (uid, created_at, model_key, strategy_key, status, body) "
                 "VALUES ('u1', '2026-01-01', 'k', 'full/z0/gc/mb4', 'ok', ?)", (body,))
    conn.execute("INSERT INTO memfit_meta VALUES ('schema_version', '1')")
    conn.commit()
    conn.close()
    with open_store(str(path)) as store:
        assert store.schema_version() == 2
        assert [s.record.case for s in store.records(model_key="k")] == ["fms-mistral7b-full-1gpu-b4"]
    indexes = sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    assert ("memfit_records_by_model",) in indexes


def test_a_store_from_a_newer_memfit_is_refused(tmp_path):
    path = tmp_path / "new.sqlite"
    open_store(str(path)).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE memfit_meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=r"schema version 99 is newer than this memfit understands \(2\)"):
        open_store(str(path))


def test_an_unknown_store_url_is_an_error(capsys, monkeypatch):
    monkeypatch.setenv("MEMFIT_STORE", "mysql://db/memfit")
    code, _, err = run(["history"], capsys)
    assert code == 2 and "MEMFIT_STORE=mysql://db/memfit: unknown store URL" in err


def test_advise_does_not_create_a_store(tmp_path, monkeypatch):
    path = tmp_path / "none" / "store.sqlite"
    monkeypatch.setenv("MEMFIT_STORE", str(path))
    advise(plan_from_dict(_mistral_plan()))
    assert not path.exists()


@pytest.mark.slow
def test_two_processes_recording_at_once_both_land(tmp_path):
    url = str(tmp_path / "s.sqlite")
    open_store(url).close()
    start = time.time() + 1.5  # both children wait for this moment, then write as fast as they can
    procs = [writer(url, tag, 25, start) for tag in ("a", "b")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
    with open_store(url) as store:
        cases = sorted(s.record.case for s in store.records())
    assert cases == sorted([f"a-{i}" for i in range(25)] + [f"b-{i}" for i in range(25)])


@pytest.mark.slow
def test_a_process_killed_mid_run_loses_no_committed_record(tmp_path):
    url = str(tmp_path / "s.sqlite")
    proc = writer(url, "k", 100_000, 0.0)
    committed = []
    while len(committed) < 30:  # ids are printed only after their transaction committed
        committed.append(int(proc.stdout.readline()))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    conn = sqlite3.connect(tmp_path / "s.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    with open_store(url) as store:
        ids = {s.id for s in store.records()}
    assert set(committed) <= ids


def test_record_and_history_and_export_import(tmp_path, capsys, monkeypatch):
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps(published_record()))
    code, out, _ = run(["record", rec], capsys)
    assert code == 0 and out.startswith("added          #1  ok     full/z0/gc/mb4  GPU peak 75.88 GiB")
    code, out, _ = run(["record", rec], capsys)
    assert code == 0 and out.startswith("already stored #1")
    code, out, _ = run(["history", "--json"], capsys)
    listed = json.loads(out)["records"]
    assert [r["record"]["nvml_used_bytes"] for r in listed] == [77_705 * MiB]
    code, out, _ = run(["history"], capsys)
    assert "mistralai/Mistral-7B-v0.1" in out and "75.88" in out and "A100-SXM4-80GB" in out
    export = tmp_path / "runs.jsonl"
    assert run(["history", "--export", export], capsys)[0] == 0
    monkeypatch.setenv("MEMFIT_STORE", str(tmp_path / "team.sqlite"))
    code, out, _ = run(["record", export], capsys)
    assert code == 0 and out.startswith("added          #1")
    code, out, _ = run(["history", "--json"], capsys)
    assert [r["record"] for r in json.loads(out)["records"]] == [r["record"] for r in listed]


def test_record_reads_a_log_with_its_plan(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(_mistral_plan(micro_batch_size=2)))
    code, out, err = run(["record", LOGS / "torch_peaks.log", "--plan", plan], capsys)
    assert code == 0, err
    code, out, _ = run(["history", "--json"], capsys)
    r = json.loads(out)["records"][0]["record"]
    # The fixture's largest prints: reserved 25769803776 bytes; allocated "peak allocated (MiB): 20480".
    assert r["max_memory_reserved"] == 25_769_803_776 and r["max_memory_allocated"] == 20 * GIB
    assert r["strategy_key"] == "full/z0/gc/mb2" and r["status"] == "ok" and r["source"].startswith("log:")


@pytest.mark.parametrize("content, message", [
    ("step 1 loss 2.0\n", "torch_peaks.log: a log needs the plan of the run it came from"),
    ('{"status": "ok"}', "rec.json: plan: Field required"),
    ('{"plan": {}, "strategy_key": "x", "strategy": {}, "colour": 1}', "rec.json: colour: Extra inputs are not permitted"),
    ('{"a": 1}\n{"b": 2', "rec.jsonl:2: not a JSON record"),
])
def test_bad_files_to_record_name_the_file_and_key(tmp_path, capsys, content, message):
    name = message.split(":")[0]
    f = tmp_path / name
    f.write_text(content)
    code, _, err = run(["record", f], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_a_recorded_run_calibrates_its_family_and_the_explanation_cites_it(tmp_path, capsys):
    plan = plan_from_dict(_mistral_plan(method="auto", zero_stage="auto", offload_optimizer="auto",
                                        offload_param="auto", micro_batch_size=1))
    before = {c.key: c for c in advise(plan).candidates}
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps(published_record()))
    assert run(["record", rec], capsys)[0] == 0
    after = {c.key: c for c in advise(plan).candidates}
    # ratio = the published nvidia-smi peak / memfit's estimate of that run's own plan
    ratio = (77_705 / 1024) / estimate(plan_from_dict(published_record()["plan"])).gpu_peak_gib
    full = after["full/z0/gc/mb1"]
    calibration = next(e for e in full.explanation if e.rule == "measured-calibration")
    assert f"= {ratio:.2f} for this plan family (store record #1 (" in calibration.message
    assert "A100-SXM4-80GB, full/z0/gc/mb4" in calibration.message
    # The estimate is unchanged; the verdict compares estimate x ratio with a budget with the measured error.
    assert full.memory.gpu_peak_gib == before["full/z0/gc/mb1"].memory.gpu_peak_gib
    lora = after["lora/z0/gc/mb1"]
    assert not any(e.rule == "measured-calibration" for e in lora.explanation)
    assert not any(e.rule == "measured-calibration" for e in advise(plan, history=False).candidates[0].explanation)


def test_a_record_whose_strategy_key_disagrees_with_its_strategy_is_refused(tmp_path, capsys):
    f = tmp_path / "rec.json"
    f.write_text(json.dumps({**published_record(), "strategy_key": "lora/z0/gc/mb4"}))
    code, _, err = run(["record", f], capsys)
    assert code == 2 and "rec.json: strategy_key: 'lora/z0/gc/mb4' does not match strategy (whose key is " \
                         "'full/z0/gc/mb4')" in err


def test_a_run_checkpoint_is_replaced_by_the_runs_next_write(tmp_path):
    base = {**published_record(), "model_key": "k", "run_id": "run-1"}
    with open_store(str(tmp_path / "s.sqlite")) as store:
        assert store.add(MeasurementRecord.model_validate({**base, "status": "incomplete"})) == (1, True)
        assert store.add(MeasurementRecord.model_validate({**base, "status": "ok"})) == (1, False)
        assert [s.record.status for s in store.records()] == ["ok"]


def test_a_store_that_cannot_be_read_does_not_stop_the_advice(tmp_path, monkeypatch):
    bad = tmp_path / "not-a-db.sqlite"
    bad.write_text("this is not a SQLite database\n" * 100)
    monkeypatch.setenv("MEMFIT_STORE", str(bad))
    advice = advise(plan_from_dict(_mistral_plan()))
    assert any(n.startswith(f"store not read ({bad}: cannot open the store (file is not a database))")
               for n in advice.measured)
    assert advice.candidates


def test_bench_results_are_recorded_with_their_environment(tmp_path, capsys):
    # The shape bench/gpu_calibration.py writes: the environment, then one row per case.
    rec = published_record()
    row = {"case": rec["case"], "model": "mistralai/Mistral-7B-v0.1", "method": "full", "seq_len": 4096,
           "micro_batch": 4, "checkpointing": True, "attention": "flash_attention_2", "deepspeed": "",
           "status": "ok", "max_memory_allocated": rec["max_memory_allocated"], "max_memory_reserved": None,
           "nvml_used_bytes": rec["nvml_used_bytes"], "host_rss_bytes": None, "step_seconds": 1.5, "error": None,
           "estimate": {"error": "not run"}, "plan": rec["plan"]}
    skipped = {"case": "x", "status": "skipped", "error": "--max-seconds reached"}
    results = {"date": "2026-11-30T12:00:00+00:00", "device": "cuda", "torch": "2.13.0", "transformers": "5.24.0",
               "python": "3.11.7", "device_name": "NVIDIA A100-SXM4-80GB", "gpu_memory_bytes": 85_899_345_920,
               "rows": [row, skipped]}
    f = tmp_path / "a100.json"
    f.write_text(json.dumps(results))
    assert run(["record", f], capsys)[0] == 0
    [stored] = open_store().records()
    r = stored.record
    assert r.source == "bench:a100.json" and r.device_name == "NVIDIA A100-SXM4-80GB" and r.estimate is None
    assert r.versions == {"torch": "2.13.0", "transformers": "5.24.0", "python": "3.11.7"} and r.step_seconds == 1.5


def test_a_recorded_oom_rejects_that_strategy_on_the_same_gpu(tmp_path, capsys):
    rec = {**published_record(), "status": "oom", "nvml_used_bytes": None, "max_memory_allocated": None,
           "error": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.00 GiB."}
    f = tmp_path / "oom.json"
    f.write_text(json.dumps(rec))
    assert run(["record", f], capsys)[0] == 0
    same = plan_from_dict({**published_record()["plan"], "training": {**published_record()["plan"]["training"]}})
    [c] = advise(same).candidates
    assert not c.feasible and any(e.rule == "measured-oom" and "store record #1" in e.message for e in c.explanation)
    other_gpu = plan_from_dict({**published_record()["plan"], "hardware": {"gpu_memory": 141, "host_memory": 128}})
    [c] = advise(other_gpu).candidates
    assert not any(e.rule == "measured-oom" for e in c.explanation)  # a bigger card: the OOM proves nothing
