"""Which CPU features the llama.cpp build may use, and the check that the installed build is safe here.

Two facts drive this module (DESIGN §5, docs/install.md):

- llama.cpp's AMX kernels (``ggml_backend_amx_mul_mat``) segfault on Sapphire Rapids-class Xeons
  (llama.cpp#20824, ollama#17205), and llama-cpp-python's sdist compiles them in whenever it builds
  with ``-march=native`` on such a CPU. So lmgate never builds with ``GGML_NATIVE``: it names each
  instruction-set extension explicitly and never names AMX.
- A build made for one CPU may run on another (a wheel cached by pip, an image built elsewhere):
  a build with extensions the CPU lacks dies of SIGILL on the first matrix product.

Targets: ``host`` takes every safe extension this CPU has (``make install``); ``portable`` is the stated
x86-64-v3 baseline (AVX2, FMA, F16C, BMI2: Intel Haswell and AMD Zen onwards), for images that run on
other nodes. Off x86 both are llama.cpp's native build (no AMX exists there).

Stdlib only: the Makefile runs this file as a script before lmgate is installed::

    .venv/bin/python backends/llamacpp/cpu_build.py install --target host   # build or reuse, then install
    python3 backends/llamacpp/cpu_build.py wheel --target portable          # build or reuse; print its path
    python3 backends/llamacpp/cpu_build.py cmake-args --target portable

and the engine calls :func:`unsafe_build_reason` on llama.cpp's ``llama_print_system_info()`` at start.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

# ggml's CMake switch for each x86 extension -> the /proc/cpuinfo flags it needs, in build order.
_X86_OPTIONS: dict[str, tuple[str, ...]] = {
    "GGML_SSE42": ("sse4_2",),
    "GGML_AVX": ("avx",),
    "GGML_AVX2": ("avx2",),
    "GGML_FMA": ("fma",),
    "GGML_F16C": ("f16c",),
    "GGML_BMI2": ("bmi2",),
    "GGML_AVX_VNNI": ("avx_vnni",),
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "GGML_AVX512_VBMI": ("avx512vbmi",),
    "GGML_AVX512_VNNI": ("avx512_vnni",),
    "GGML_AVX512_BF16": ("avx512_bf16",),
}
# Never on, whatever the CPU has: these are the kernels that crash.
_FORBIDDEN_OPTIONS = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")
PORTABLE_X86 = ("GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2")

# llama_print_system_info() names -> the /proc/cpuinfo flag the CPU needs to run them.
_SYSTEM_INFO_NEEDS = {
    "SSE3": "pni",
    "SSSE3": "ssse3",
    "AVX": "avx",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX_VNNI": "avx_vnni",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
}
_FEATURE = re.compile(r"([A-Z0-9_]+) = 1")
REBUILD_HINT = "rebuild it for this CPU: `make install` (see docs/install.md)"


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def x86_options(target: str, flags: frozenset[str]) -> list[str]:
    """The GGML_* switches to turn on: the portable baseline, or every safe one ``flags`` allow."""
    if target == "portable":
        return list(PORTABLE_X86)
    return [option for option, needs in _X86_OPTIONS.items() if all(flag in flags for flag in needs)]


def cmake_args(target: str, flags: frozenset[str] | None = None, *, x86: bool | None = None) -> list[str]:
    """CMAKE_ARGS for llama-cpp-python: explicit extensions on x86 (never AMX), native elsewhere."""
    if not (is_x86() if x86 is None else x86):
        return ["-DGGML_NATIVE=ON"]
    enabled = set(x86_options(target, cpu_flags() if flags is None else flags))
    switches = [f"-D{option}={'ON' if option in enabled else 'OFF'}" for option in _X86_OPTIONS]
    return ["-DGGML_NATIVE=OFF", *switches, *(f"-D{option}=OFF" for option in _FORBIDDEN_OPTIONS)]


def unsafe_build_reason(system_info: str, flags: frozenset[str]) -> str | None:
    """Why the llama.cpp described by ``system_info`` must not run on a CPU with ``flags``; None if safe.

    ``system_info`` is ``llama_print_system_info()``: ``CPU : SSE3 = 1 | AVX2 = 1 | AMX_INT8 = 1 | ...``.
    ``flags`` empty (no /proc/cpuinfo) skips the instruction-set comparison but not the AMX refusal.
    """
    built = set(_FEATURE.findall(system_info))
    amx = sorted(feature for feature in built if feature.startswith("AMX"))
    if amx:
        return (
            f"llama.cpp was built with AMX kernels ({', '.join(amx)}), which crash on Sapphire Rapids-class "
            f"CPUs (llama.cpp#20824): {REBUILD_HINT}"
        )
    if not flags:
        return None
    missing = sorted(
        feature for feature in built if feature in _SYSTEM_INFO_NEEDS and _SYSTEM_INFO_NEEDS[feature] not in flags
    )
    if missing:
        return f"llama.cpp was built for a CPU with {', '.join(missing)}, which this CPU lacks: {REBUILD_HINT}"
    return None


# --- building the wheel (the Makefile's and the image's step) ---


def pinned_version(pyproject: Path) -> str:
    """The llama-cpp-python version pinned in pyproject.toml (one pin for the project and its build)."""
    dependencies: list[str] = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    for requirement in dependencies:
        name, _, version = requirement.partition("==")
        if name.strip() == "llama-cpp-python":
            return version.strip()
    raise SystemExit(f"{pyproject}: no `llama-cpp-python==VERSION` in project.dependencies")


def _compiler() -> str:
    compiler = os.environ.get("CC") or "cc"
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return compiler


def build_wheel(version: str, args: list[str], cache: Path) -> Path:
    """The wheel of llama-cpp-python ``version`` built with ``args``: reused from ``cache`` or built now.

    The cache is keyed by everything that shapes the binary (version, CMake args, compiler, Python), so
    a wheel built for other flags or another CPU is never picked up; pip's own wheel cache is bypassed
    for the same reason (it keys wheels by the sdist alone).
    """
    key_text = "\n".join([version, *args, _compiler(), sys.version, platform.machine()])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    directory = cache / f"llama_cpp_python-{version}-{key}"
    wheels = sorted(directory.glob("*.whl"))
    if wheels:
        print(f"llama.cpp: using the build made earlier for this CPU ({wheels[0]})", file=sys.stderr)
        return wheels[0]
    print(f"Compiling llama.cpp (llama-cpp-python {version}) for this CPU: about 5 minutes on 2 cores, less on "
          f"more; once only, the wheel is kept in {directory}", file=sys.stderr)  # fmt: skip
    print(f"CMake arguments: {' '.join(args)}", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        env = {**os.environ, "CMAKE_ARGS": " ".join(args)}
        # -v: pip passes the build's own output through, which BuildProgress turns into progress lines.
        command = [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-cache-dir", "--progress-bar", "off"]
        command += ["--no-binary", "llama-cpp-python", "-w", scratch, f"llama-cpp-python=={version}"]
        run_with_progress(command, env)
        built = next(Path(scratch).glob("*.whl"))
        staging = Path(scratch) / "out"
        staging.mkdir()
        shutil.move(built, staging / built.name)
        try:
            staging.rename(directory)  # atomic: a half-written wheel is never found
        except OSError:
            if not directory.is_dir():  # else another build of the same key finished first
                raise
    return next(directory.glob("*.whl"))


# pip -v indents the build's lines: "  [12/193] /usr/bin/g++ ..." (ninja), "  [ 42%] Building ..." (make).
_NINJA_STEP = re.compile(r"^\s*\[\s*(\d+)/(\d+)\]")
_MAKE_PERCENT = re.compile(r"^\s*\[\s*(\d+)%\]")


class BuildProgress:
    """The compiler's output as a few progress lines: one each tenth of the compile steps (ninja's
    ``[n/m]``, make's ``[ p%]``), and one a minute while nothing counts (pip fetching and preparing the
    sdist). Keeps the last lines, to show when the build fails."""

    def __init__(self, out: TextIO, *, clock: Callable[[], float] = time.monotonic, quiet_s: float = 60.0) -> None:
        self._out = out
        self._clock = clock
        self._quiet_s = quiet_s
        self._started = self._last_said = clock()
        self._tenths = -1
        self.tail: deque[str] = deque(maxlen=40)

    def feed(self, line: str) -> None:
        self.tail.append(line.rstrip("\n"))
        now = self._clock()
        step, percent = _NINJA_STEP.match(line), _MAKE_PERCENT.match(line)
        if step:
            done, total = int(step[1]), max(int(step[2]), 1)
            fraction, detail = done / total, f" ({done}/{total} steps)"
        elif percent:
            fraction, detail = int(percent[1]) / 100, ""
        else:
            if now - self._last_said >= self._quiet_s:
                self._say(f"llama.cpp build: still working, {self._elapsed(now)}", now)
            return
        if int(fraction * 10) > self._tenths:
            self._tenths = int(fraction * 10)
            self._say(f"llama.cpp build: {fraction:.0%} compiled{detail}, {self._elapsed(now)}", now)

    def _elapsed(self, now: float) -> str:
        seconds = int(now - self._started)
        return f"{seconds // 60}m{seconds % 60:02d}s"

    def _say(self, text: str, now: float) -> None:
        print(text, file=self._out, flush=True)
        self._last_said = now


def run_with_progress(command: list[str], env: dict[str, str], out: TextIO = sys.stderr) -> None:
    """Run the build ``command``, showing BuildProgress on ``out``; SystemExit with its last lines if it fails."""
    progress = BuildProgress(out)
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as process:  # fmt: skip
        assert process.stdout is not None
        for line in process.stdout:
            progress.feed(line)
    if process.returncode != 0:
        print("\n".join(progress.tail), file=out)
        raise SystemExit(f"building llama.cpp failed (exit status {process.returncode}); its last lines are above")


def install_wheel(wheel: Path) -> None:
    """Install ``wheel`` into this interpreter's environment unless it is the one installed already."""
    record = Path(sys.prefix) / ".lmgate-llama-wheel"
    if record.is_file() and record.read_text() == str(wheel):
        return
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(wheel)]
    subprocess.run(command, check=True)
    record.write_text(str(wheel))


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lmgate" / "llama-wheels"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build llama-cpp-python without AMX, for this CPU or portably.")
    parser.add_argument("command", choices=["cmake-args", "wheel", "install", "check"])
    parser.add_argument("--target", choices=["host", "portable"], default="host")
    parser.add_argument("--cache", type=Path, default=_default_cache(), help="where built wheels are kept")
    parser.add_argument("--pyproject", type=Path, default=Path(__file__).resolve().parents[2] / "pyproject.toml")
    options = parser.parse_args(argv)
    args = cmake_args(options.target)
    if options.command == "cmake-args":
        print(" ".join(args))
    elif options.command == "wheel":
        print(build_wheel(pinned_version(options.pyproject), args, options.cache))
    elif options.command == "install":
        install_wheel(build_wheel(pinned_version(options.pyproject), args, options.cache))
    else:  # check: the installed llama_cpp, from a process of its own
        import llama_cpp

        reason = unsafe_build_reason(llama_cpp.llama_print_system_info().decode(), cpu_flags())
        print(reason or "llama.cpp build is safe on this CPU")
        raise SystemExit(1 if reason else 0)


if __name__ == "__main__":
    main()
