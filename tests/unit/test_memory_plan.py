"""The memory planner: KV arithmetic from the GGUF header, and refusals that say what to lower."""

import subprocess
import sys

import pytest

from lmgate.backends.errors import BackendUnavailable
from lmgate.backends.llamacpp.memory_plan import available_bytes, check_fits, host_tier_cells, plan, read_shape

from engine_helpers import start_backend


def test_shape_and_kv_bytes_of_the_shipped_model(tiny_chat_path):
    shape = read_shape(tiny_chat_path)
    assert (shape.layers, shape.heads, shape.kv_heads, shape.head_dim, shape.vocab) == (4, 8, 4, 32, 1024)
    estimate = plan(tiny_chat_path, n_ctx=2000, seqs=8)
    assert estimate.cells == 2048  # llama.cpp pads the context to 256
    assert estimate.kv_bytes == 4 * 4 * 32 * 2048 * 2 * 2  # layers x kv heads x head dim x cells x f16 x (K, V)
    assert estimate.weights_bytes < tiny_chat_path.stat().st_size


def test_a_config_that_does_not_fit_names_the_context_to_lower(tiny_chat_path):
    estimate = plan(tiny_chat_path, n_ctx=65536, seqs=8)
    with pytest.raises(MemoryError) as err:
        check_fits(estimate, available=estimate.total_bytes // 2, name="tiny")
    assert "lower n_ctx to at most" in str(err.value)
    check_fits(estimate, available=estimate.total_bytes, name="tiny")


async def test_the_engine_refuses_to_load_what_does_not_fit_in_ram(tiny_chat_path):
    per_cell = plan(tiny_chat_path, n_ctx=4096, seqs=1).kv_bytes // 4096
    too_many = -(-4 * available_bytes() // per_cell // 256) * 256  # a KV cache of 4x this host's free memory
    with pytest.raises(BackendUnavailable, match="lower n_ctx"):
        await start_backend(tiny_chat_path, n_ctx=too_many)


def test_lmgate_plan_prints_the_estimate(tiny_chat_path):
    result = subprocess.run(
        [sys.executable, "-m", "lmgate.server.cli", "plan", "--model", str(tiny_chat_path), "--ctx", "4096"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "KV cache:  8.0 MiB" in result.stdout and "fits" in result.stdout


def test_the_host_tier_takes_cache_ram_mib_but_never_more_than_half_the_memory_available():
    assert host_tier_cells(1024, 4096, available=64 * 2**30) == 2**30 // 4096
    assert host_tier_cells(1024, 4096, available=2**30) == 2**29 // 4096
    assert host_tier_cells(0, 4096, available=2**30) == 0
