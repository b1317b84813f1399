"""Resource readings, the monitor's process list, and check-env's verdicts."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from packaging.requirements import Requirement

from lumi_jax.session import main
from lumi_jax.sessions import env_check, monitor


def test_monitor_once_shows_resources_and_finds_lumi_processes(tmp_path, capsys):
    # A process whose command line names lumi_jax stands in for a running training.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "lumi_jax.train"])
    try:
        time.sleep(0.2)
        reading = monitor.take_reading(tmp_path, monitor.ProcessWatch())
        assert child.pid in [p["pid"] for p in reading["processes"]]
        assert 0 < reading["memory_used_bytes"] <= reading["memory_total_bytes"]
        assert reading["disk_free_bytes"] > 0
        assert main(["monitor", "--once", "--path", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert "memory" in out and "lumi processes" in out and str(child.pid) in out
    finally:
        child.kill()
        child.wait()


def test_peak_tracker_reports_memory_and_bytes_written(tmp_path):
    with monitor.PeakTracker(interval_s=0.05) as tracker:
        (tmp_path / "blob").write_bytes(b"\0" * 2_000_000)
        block = bytearray(50_000_000)  # the peak must include this
        time.sleep(0.1)
        del block
    summary = tracker.summary()
    assert summary["peak_rss_bytes"] > 50_000_000
    assert summary["disk_written_bytes"] is None or summary["disk_written_bytes"] >= 0


def test_check_env_passes_here_and_reports_json(capsys):
    assert main(["check-env", "--json"]) == 0
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert checks["python"]["status"] == "ok" and checks["jax"]["status"] == "ok"
    assert checks["jax devices"]["status"] == "ok" and "cpu" in checks["jax devices"]["detail"]


def test_check_env_exits_1_with_the_fix_when_a_package_is_missing(monkeypatch, capsys):
    required = env_check.core_requirements() + [Requirement("lumi-surely-not-installed>=1")]
    monkeypatch.setattr(env_check, "core_requirements", lambda: required)
    assert main(["check-env"]) == 1
    out = capsys.readouterr().out
    assert "lumi-surely-not-installed" in out and "make install" in out


def test_bad_monitor_interval_is_a_user_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["monitor", "--interval", "0"])
    assert exit_info.value.code == 2 and "--interval" in capsys.readouterr().err
