"""The llama.cpp build: never AMX, never more than the CPU has, refused at start when it is unsafe, and
showing its progress while it compiles."""

import io
import os
import sys

import llama_cpp
import pytest

from lmgate.backends.errors import ModelLoadError
from lmgate.backends.llamacpp import cpu_build
from lmgate.backends.llamacpp.host import check_build

# /proc/cpuinfo flags, trimmed to the ones that matter here.
ZEN3 = frozenset({"fpu", "pni", "ssse3", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"})
SAPPHIRE_RAPIDS = ZEN3 | {
    "avx_vnni", "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw", "avx512vbmi", "avx512_vnni", "avx512_bf16",
    "amx_tile", "amx_int8", "amx_bf16",
}  # fmt: skip
AMX_BUILD = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | REPACK = 1 |"
AVX512_BUILD = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 1 | AVX512_VNNI = 1 |"


def switches(args: list[str]) -> dict[str, str]:
    return dict(arg.removeprefix("-D").split("=") for arg in args)


def test_a_host_build_on_sapphire_rapids_takes_avx512_and_never_amx():
    built = switches(cpu_build.cmake_args("host", SAPPHIRE_RAPIDS, x86=True))
    assert built["GGML_NATIVE"] == "OFF"  # -march=native would switch AMX on
    assert built["GGML_AVX512"] == built["GGML_AVX512_VNNI"] == built["GGML_AVX512_BF16"] == "ON"
    assert {built[f"GGML_AMX_{x}"] for x in ("TILE", "INT8", "BF16")} == {"OFF"}


def test_a_host_build_takes_only_what_the_cpu_has():
    built = switches(cpu_build.cmake_args("host", ZEN3, x86=True))
    assert built["GGML_AVX2"] == built["GGML_FMA"] == "ON"
    assert built["GGML_AVX512"] == built["GGML_AVX_VNNI"] == "OFF"


def test_the_portable_build_is_the_x86_64_v3_baseline_whatever_the_build_host_has():
    built = switches(cpu_build.cmake_args("portable", SAPPHIRE_RAPIDS, x86=True))
    assert [k for k, v in built.items() if v == "ON"] == list(cpu_build.PORTABLE_X86)


def test_off_x86_the_build_is_native():
    assert cpu_build.cmake_args("host", frozenset(), x86=False) == ["-DGGML_NATIVE=ON"]


def test_an_amx_build_is_refused_with_the_fix():
    reason = cpu_build.unsafe_build_reason(AMX_BUILD, SAPPHIRE_RAPIDS)
    assert reason is not None and "AMX_INT8" in reason and "make install" in reason
    assert cpu_build.unsafe_build_reason(AMX_BUILD, frozenset()) is not None  # even where cpuinfo is unreadable


def test_a_build_for_instructions_this_cpu_lacks_is_refused():
    reason = cpu_build.unsafe_build_reason(AVX512_BUILD, ZEN3)
    assert reason is not None and "AVX512, AVX512_VNNI" in reason
    assert cpu_build.unsafe_build_reason(AVX512_BUILD, SAPPHIRE_RAPIDS) is None


def test_the_installed_build_is_safe_here_and_the_engine_checks_it(monkeypatch):
    info = llama_cpp.llama_print_system_info().decode()
    assert cpu_build.unsafe_build_reason(info, cpu_build.cpu_flags()) is None, info
    check_build()
    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: AMX_BUILD.encode())
    with pytest.raises(ModelLoadError, match="AMX"):
        check_build()


def test_cpu_flags_are_read_from_cpuinfo():
    assert cpu_build.cpu_flags("processor\t: 0\nflags\t\t: fpu avx2 fma\n") == {"fpu", "avx2", "fma"}
    assert cpu_build.cpu_flags("") == frozenset()


def fake_build(lines: list[str], status: int = 0) -> list[str]:
    """A real child process printing ``lines`` as the compile would, then exiting with ``status``."""
    script = f"import sys\nfor line in {lines!r}: print(line)\nsys.exit({status})"
    return [sys.executable, "-c", script]


def test_the_build_shows_a_progress_line_each_tenth_of_the_compile():
    out = io.StringIO()
    steps = [f"  [{i}/40] /usr/bin/g++ -O3 -c ggml/src/file{i}.cpp" for i in range(1, 41)]  # as pip -v shows them
    cpu_build.run_with_progress(fake_build(["Processing llama-cpp-python", *steps]), dict(os.environ), out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 11  # 0 % (the first step), 10 %, 20 % ... 100 %
    assert lines[0].startswith("llama.cpp build: 2% compiled (1/40 steps), 0m")
    assert lines[-1].startswith("llama.cpp build: 100% compiled (40/40 steps)")


def test_make_style_percentages_count_too_and_a_quiet_stretch_is_reported():
    out, now = io.StringIO(), [0.0]
    progress = cpu_build.BuildProgress(out, clock=lambda: now[0], quiet_s=60)
    for t, line in ((10, "Collecting llama-cpp-python"), (70, "Preparing metadata"), (80, "[ 55%] Building C object")):
        now[0] = t
        progress.feed(line + "\n")
    assert out.getvalue().splitlines() == ["llama.cpp build: still working, 1m10s",
                                           "llama.cpp build: 55% compiled, 1m20s"]  # fmt: skip


def test_a_failed_build_shows_its_last_lines_and_says_it_failed():
    out = io.StringIO()
    with pytest.raises(SystemExit, match=r"building llama.cpp failed \(exit status 3\)"):
        cpu_build.run_with_progress(fake_build(["[1/2] ok", "error: no compiler"], status=3), dict(os.environ), out)
    assert out.getvalue().splitlines()[-2:] == ["[1/2] ok", "error: no compiler"]
