"""The same store on a real PostgreSQL server that this module starts (Debian's postgresql package):
`MEMFIT_STORE=postgresql://...`. Skips with the reason where the server or psycopg is missing; under
CI=true it fails instead (tests/pg_server.py)."""
from __future__ import annotations

import itertools
import json
import signal
import time

import pytest

import pg_server
from memfit.cli.main import main
from memfit.engine import advise, plan_from_dict
from memfit.engine.store.open import open_store
from memfit.engine.store.postgres import PostgresStore
from memfit.engine.store.record import MeasurementRecord
from memfit.engine.store.sql import SCHEMA_VERSION

from store_helpers import published_record, writer

pytestmark = pytest.mark.slow
_names = itertools.count()


@pytest.fixture(scope="module")
def server():
    reason = pg_server.unavailable()
    if reason:
        pg_server.skip_or_fail(reason)
    srv = pg_server.Server()
    try:
        url = srv.start()
    except Exception as exc:  # noqa: BLE001  (a server that will not start is a reason, said plainly)
        srv.stop()
        pg_server.skip_or_fail(f"the PostgreSQL server did not start: {exc}")
    yield url
    srv.stop()


@pytest.fixture
def pg_url(server):
    """A fresh, empty database on the test server."""
    import psycopg

    name = f"memfit_t{next(_names)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.replace("/postgres?", f"/{name}?")


def test_a_record_round_trips_on_postgresql(pg_url):
    rec = MeasurementRecord.model_validate({**published_record(), "model_key": "k"})
    with open_store(pg_url) as store:
        assert isinstance(store, PostgresStore) and store.schema_version() == SCHEMA_VERSION
        assert store.add(rec) == (1, True) and store.add(rec) == (1, False)
        assert [s.record for s in store.records(model_key="k")] == [rec]
        assert store.records(model_key="other") == []


def test_two_processes_recording_at_once_both_land_on_postgresql(pg_url):
    # Neither child finds the schema: both migrate at once (the advisory lock orders them), then write.
    start = time.time() + 2.0
    procs = [writer(pg_url, tag, 25, start) for tag in ("a", "b")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-800:] for o in outs]
    with open_store(pg_url) as store:
        cases = sorted(s.record.case for s in store.records())
    assert cases == sorted([f"a-{i}" for i in range(25)] + [f"b-{i}" for i in range(25)])


def test_a_killed_writer_loses_no_committed_record_on_postgresql(pg_url):
    proc = writer(pg_url, "k", 100_000, 0.0)
    committed = [int(proc.stdout.readline()) for _ in range(30)]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with open_store(pg_url) as store:
        ids = {s.id for s in store.records()}
    assert set(committed) <= ids


def test_advise_record_and_history_through_the_url(pg_url, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEMFIT_STORE", pg_url)
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps(published_record()))
    assert main(["record", str(rec)]) == 0
    assert main(["history", "--json"]) == 0
    out = capsys.readouterr().out
    listed = json.loads(out[out.index("{\n"):])
    assert listed["store"] == pg_url and listed["records"][0]["record"]["nvml_used_bytes"] == 77_705 * 2**20
    plan = plan_from_dict({"model": "mistralai/Mistral-7B-v0.1", "hardware": {"gpu_memory": 80, "host_memory": 256},
                           "training": {"method": "full", "zero_stage": 0, "offload_optimizer": "none",
                                        "offload_param": "none", "precision": "pure_bf16",
                                        "gradient_checkpointing": True, "micro_batch_size": 1}})
    best = advise(plan).candidates[0]
    assert any(e.rule == "measured-calibration" and "store record #1" in e.message for e in best.explanation)


def test_a_run_checkpoint_is_replaced_on_postgresql(pg_url):
    base = {**published_record(), "model_key": "k", "run_id": "run-1"}
    with open_store(pg_url) as store:
        assert store.add(MeasurementRecord.model_validate({**base, "status": "incomplete"})) == (1, True)
        assert store.add(MeasurementRecord.model_validate({**base, "status": "ok"})) == (1, False)
        assert [s.record.status for s in store.records()] == ["ok"]
