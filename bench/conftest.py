"""Options and fixtures of the benchmark suite (`pytest bench --benchmark-only`).

--bench-scale tiny|small|resnet18-cpu|large (default: large with CUDA, small without) picks sizes and timesteps from
`bench.config.SCALES`; --bench-compile-max-steps overrides the largest T timed for torch.compile;
--bench-providers restricts the kernel providers (comma-separated); --bench-threads sets torch's CPU threads
(default 1 without CUDA: steady numbers on a shared machine, and no OpenMP spinning against other processes).
"""

from __future__ import annotations

import gc

import pytest
import torch

from bench.config import SCALES, Scale, bench_device, default_scale, device_name
from bench.providers import MODES, PROVIDERS


def pytest_addoption(parser):
    group = parser.getgroup("spikekd-bench")
    group.addoption("--bench-scale", choices=sorted(SCALES), default=None, help="sizes and timesteps (bench/config.py)")
    group.addoption("--bench-compile-max-steps", type=int, default=None, help="largest T timed for torch.compile")
    group.addoption("--bench-providers", default=None, help=f"comma-separated subset of {','.join(PROVIDERS)}")
    group.addoption("--bench-threads", type=int, default=None, help="torch CPU threads (default: 1 without CUDA)")


def pytest_configure(config):
    threads = config.getoption("--bench-threads")
    if threads is None and not torch.cuda.is_available():
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)


def _scale_name(config) -> str:
    return config.getoption("--bench-scale") or default_scale()


def _providers(config) -> list[str]:
    chosen = config.getoption("--bench-providers")
    if chosen is None:
        return list(PROVIDERS)
    names = [p.strip() for p in chosen.split(",") if p.strip()]
    unknown = sorted(set(names) - set(PROVIDERS))
    if unknown:
        raise pytest.UsageError(f"--bench-providers: unknown {unknown}; accepted: {list(PROVIDERS)}")
    return names


def pytest_generate_tests(metafunc):
    scale = SCALES[_scale_name(metafunc.config)]
    if "provider" in metafunc.fixturenames:
        metafunc.parametrize("provider", _providers(metafunc.config))
    if "mode" in metafunc.fixturenames:
        metafunc.parametrize("mode", MODES)
    if "n_neurons" in metafunc.fixturenames:
        metafunc.parametrize("n_neurons", scale.neurons, ids=[f"N{n}" for n in scale.neurons])
    if "dtype" in metafunc.fixturenames:
        metafunc.parametrize("dtype", scale.dtypes)
    if "n_steps" in metafunc.fixturenames:
        metafunc.parametrize("n_steps", scale.steps, ids=[f"T{t}" for t in scale.steps])
    if "train_steps" in metafunc.fixturenames:
        metafunc.parametrize("train_steps", scale.train_steps, ids=[f"T{t}" for t in scale.train_steps])


@pytest.fixture(scope="session")
def scale_name(request) -> str:
    return _scale_name(request.config)


@pytest.fixture(scope="session")
def scale(scale_name) -> Scale:
    return SCALES[scale_name]


@pytest.fixture(scope="session")
def compile_max_steps(request, scale) -> int:
    value = request.config.getoption("--bench-compile-max-steps")
    return scale.compile_max_steps if value is None else value


@pytest.fixture(scope="session")
def device() -> torch.device:
    return bench_device()


@pytest.fixture(scope="session")
def machine_info(device, scale_name) -> dict:
    """Recorded in every case's extra_info, so that a saved run says what produced it."""
    info = {"device": device.type, "device_name": device_name(device), "scale": scale_name, "torch": torch.__version__}
    info["threads"] = torch.get_num_threads()
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info


@pytest.fixture(autouse=True)
def _release_memory(device):
    """Each case starts with the previous one's tensors gone (large cases hold GiBs on the GPU)."""
    yield
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
