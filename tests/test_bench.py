"""The benchmark suite itself: providers compute the same neuron, the report's arithmetic, and the GPU script's
pipeline end to end under --dry-run (tiny sizes on the CPU)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import report
from bench.providers import Unavailable, bytes_moved, make_call, spikingjelly_version

REPO = Path(__file__).resolve().parents[1]


def _outputs(provider: str, mode: str, x: torch.Tensor):
    try:
        out = make_call(provider, mode, x)()
    except Unavailable as why:
        pytest.skip(str(why))
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize(
    "provider, mode",
    [
        ("sj-torch", "fwd"),
        ("sj-torch", "fwd+bwd"),
        pytest.param(
            "compile",
            "fwd+bwd",
            marks=[
                pytest.mark.slow,
                pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler"),
            ],
        ),
    ],
)
def test_providers_agree_with_reference(provider, mode, seed):
    """Same spikes, and the same input gradient to rounding, for a fixed upstream gradient: the settings match."""
    if provider.startswith("sj-") and spikingjelly_version() is None:
        pytest.skip("spikingjelly is not installed")
    x = torch.randn(5, 2, 37) * 1.5 + 0.5
    expected = _outputs("reference", mode, x)
    got = _outputs(provider, mode, x)
    if mode == "fwd":
        assert torch.equal(got[0], expected[0])
    else:
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_triton_provider_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(Unavailable, match="CUDA"):
        make_call("triton", "fwd", torch.zeros(2, 3))


def test_bytes_moved():
    assert bytes_moved("fwd", 4, 10, 4) == 2 * 4 * 10 * 4
    assert bytes_moved("fwd+bwd", 4, 10, 2) == 6 * 4 * 10 * 2
    assert bytes_moved("rate", 4, 10, 4) == 2 * 4 * 10 * 4 + 2 * 10 * 4
    with pytest.raises(ValueError, match="mode"):
        bytes_moved("bwd", 1, 1, 4)


def _bench(name, median, **extra):
    return {"name": name, "stats": {"median": median, "rounds": 3}, "extra_info": {"device": "cuda", **extra}}


def _fake_run(path: Path) -> Path:
    """A GPU-like saved run: copy at 1000 GB/s; at N = 2^24, triton fwd+bwd at 800 GB/s and SpikingJelly at 400;
    at N = 2^20 triton at 500 GB/s; rate-mode memory flat in T, SpikingJelly's BPTT 16x rate's memory at T=16."""
    info = {"device_name": "NVIDIA H100 80GB HBM3", "scale": "large", "torch": "2.x"}
    mb = 10**6
    benches = [_bench("copy", 2 * mb / 1000e9 * 1000, kind="copy", bytes=2 * mb * 1000, **info)]
    for t in (1, 16):
        n = 6 * t * mb
        for neurons, provider, speed in ((1 << 24, "triton", 800e9), (1 << 24, "sj-triton", 400e9),
                                         (1 << 20, "triton", 500e9)):  # fmt: skip
            benches.append(
                _bench(f"{provider}{t}{neurons}", n / speed, kind="kernel", op="lif_multistep", provider=provider,
                       mode="fwd+bwd", T=t, neurons=neurons, dtype="float32", bytes=n, **info)
            )  # fmt: skip
        for mode, scale_t, seconds in (("sj-bptt", t, 0.01 * t), ("rate", 1, 0.04)):
            memory = {"peak_bytes": 100 * mb * scale_t, "baseline_bytes": mb}
            benches.append(
                _bench(f"{mode}{t}", seconds, kind="train", model="resnet18", mode=mode, T=t, batch=64,
                       image=32, **memory, **info)
            )  # fmt: skip
    path.write_text(json.dumps({"datetime": "now", "benchmarks": benches}))
    return path


def test_report_tables_and_targets(tmp_path):
    run = report.load([_fake_run(tmp_path / "run.json")])
    assert report.copy_gbps(run) == pytest.approx(1000)
    text = "\n".join(report.targets(run))
    assert "`rate` memory, T=16 vs T=1: 1.00x (95.4 -> 95.4 MiB; target <= 1.3x): met" in text
    assert "(`sj-bptt`) vs `rate` at T=16: memory 16.00x (target >= 4x): met; time 4.00x" in text
    assert "fwd+bwd, float32, N=2^24, T=16: 80% of copy (target >= 85%): **missed**, short by 1.06x" in text
    assert "fwd+bwd, float32, N=2^20, T=16: 50% of copy (target >= 70%): **missed**, short by 1.40x" in text
    assert "against SpikingJelly's fastest backend: T=1: 2.00x, T=16: 2.00x (target >= 1.0x at every T): met" in text
    path, _ = report.write_report(run, tmp_path / "out", "test")
    markdown = path.read_text()
    assert "| 16 | 40.00 ms | 95.4 [94.4] | 160.00 ms | 1525.9 [1524.9] |" in markdown
    assert "| 2^24 | float32 | 16 | 120.0 us, 800 GB/s (80%) | 240.0 us, 400 GB/s (40%) |" in markdown


def test_report_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    report.main([str(_fake_run(tmp_path / "run.json")), "--out", str(tmp_path / "out")])
    assert "matplotlib is not installed" in (tmp_path / "out" / "report.md").read_text()
    assert not list((tmp_path / "out").glob("*.png"))


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA, bench/gpu.sh runs for real (and runs these tests)")
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_script_dry_run(tmp_path):
    """bench/gpu.sh --dry-run: every stage runs at tiny sizes and leaves JSON, logs and the report in one folder."""
    done = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu.sh"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("kernels.json", "training.json", "tests.log", "aot.log", "kernels.log", "env.log", "report.md"):
        assert (tmp_path / name).is_file(), name
    markdown = (tmp_path / "report.md").read_text()
    assert "## Training: time and memory vs T" in markdown
    assert "`lif_rate` rate" in markdown


def test_gpu_script_refuses_a_folder_it_did_not_create(tmp_path):
    """bench/gpu.sh --out: a non-empty folder of someone else's is refused, and its files stay as they were."""
    (tmp_path / "notes.json").write_text("mine")
    (tmp_path / "run.log").write_text("mine too")
    done = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu.sh"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "did not create and is not empty" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.json", "run.log"]
    assert (tmp_path / "notes.json").read_text() == "mine"


def test_report_quantifies_a_miss(tmp_path):
    path = _fake_run(tmp_path / "run.json")
    data = json.loads(path.read_text())
    data["benchmarks"][0]["stats"]["median"] /= 2  # copy at 2000 GB/s: the kernels reach 40% of it
    path.write_text(json.dumps(data))
    text = "\n".join(report.targets(report.load([path])))
    assert "N=2^24, T=16: 40% of copy (target >= 85%): **missed**, short by 2.12x" in text
