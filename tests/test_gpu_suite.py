"""bench/gpu_suite.py --smoke: every case runs (or is skipped with its reason) on a CPU."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _analytic_flops_per_example(sizes=(784, 256, 128, 64, 10)):
    """2 FLOPs per weight forward, 4 backward, less the first layer's unneeded input gradient."""
    weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return 6 * weights - 2 * sizes[0] * sizes[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_suite")
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_suite.py"), "--smoke", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "gpu_suite.json").read_text()), (out / "gpu_suite.md").read_text()


def test_every_case_reports(smoke):
    data, md = smoke
    assert list(data["cases"]) == ["grid", "flags", "torch", "e2e", "sweep"]
    for name, rows in data["cases"].items():
        assert f"## {name}" in md
        assert rows, name
        for row in rows:
            # Only the torch peers may be missing (an optional install); every jaxtrain case runs
            # on a CPU, so a skip there would hide a failure.
            assert row["status"] == "ok" or (name == "torch" and row["status"] == "skipped"), row
    assert data["environment"]["smoke"] is True


def test_grid_covers_k_and_data_and_counts_the_same_flops(smoke):
    rows = smoke[0]["cases"]["grid"]
    assert {(r["precision"], r["k_setting"], r["data"]) for r in rows} == {
        (p, k, d) for p in ("float32", "bfloat16") for k in ("1", "auto", "epoch") for d in ("device", "stream")}
    steps = 512 // 64
    for r in rows:
        assert r["step_time_ms"] > 0 and 0 < r["mfu"]
        assert r["k"] == {"1": 1, "epoch": steps}.get(r["k_setting"], r["k"])
        # one step's FLOPs whatever K: XLA counts a scan's body once
        assert r["flops_per_step"] / r["batch"] == pytest.approx(_analytic_flops_per_example(), rel=0.15)


def test_flag_variants_each_ran_in_their_own_process(smoke):
    rows = smoke[0]["cases"]["flags"]
    variants = {r["case"].split(":")[0] for r in rows}
    assert variants == {"default", "command_buffer_while", "scan_unroll_8"}
    assert all(r["status"] == "ok" and r["step_time_ms"] > 0 for r in rows)
    assert any("WHILE" in r["xla_flags"] for r in rows)


def test_torch_peers_or_a_clean_skip(smoke):
    rows = smoke[0]["cases"]["torch"]
    if importlib.util.find_spec("torch") is None:
        assert rows == [{"case": "torch", "status": "skipped", "reason": "torch is not installed"}]
    else:
        assert [r["case"].split()[0] for r in rows] == ["jaxtrain", "torch", "torch.compile"]


def test_end_to_end_and_sweep(smoke):
    e2e = smoke[0]["cases"]["e2e"]
    for r in e2e:
        assert 0 < r["train_share"] < 1
        assert sum(r["breakdown_s"].values()) <= r["wall_s"]  # the run's own total is inside its process
    vectorized, sequential = smoke[0]["cases"]["sweep"]
    assert vectorized["step_time_ms"] > 0 and 0 <= vectorized["best_test_accuracy"] <= 1
    assert sequential["speedup_of_vectorized"] == pytest.approx(sequential["wall_s"] / vectorized["wall_s"])
