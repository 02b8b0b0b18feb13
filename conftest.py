"""pytest configuration shared by the test suite and the docstring examples.

The suite runs on pytest-xdist's workers (``-n auto --dist loadfile`` in pyproject.toml): one file per worker at a
time, so a module's fixtures (a catalogue, a trained fit) are built once. How many workers ``auto`` means is set
here, not by the CPU count alone: a worker's memory peaked at 6.1 GB over the default suite before its compiled
programs were released (now at each file's end and after a test that leaves it over :data:`RELEASE_ABOVE_GB`, with
the C heap trimmed over :data:`TRIM_ABOVE_GB`: a peak of 2.15-2.24 GB), so the count is the smaller of the CPUs and
one worker per :data:`GB_PER_WORKER` of physical memory, at least one.

- ``python3 -m pytest -n 0`` runs in one process (a debugger, ``-x``, a single quick test);
- ``PYTEST_XDIST_AUTO_NUM_WORKERS=N`` sets the count of ``auto`` by hand (pytest-xdist's own variable).
"""

from __future__ import annotations

import os

import pytest

#: Physical memory per test worker, GB: a worker peaked at 4.1-4.3 GB before the release above a threshold.
GB_PER_WORKER = 6
#: A worker frees its compiled programs after any test that leaves it above this resident size, GB.
RELEASE_ABOVE_GB = 2.0
#: ... and at least this much above the resident size the last release left, GB.
RELEASE_GROWTH_GB = 0.4
#: A release also hands the C heap's free pages back to the system when the worker is still above this, GB.
TRIM_ABOVE_GB = 1.6
_after_release = {"gb": 0.0}  # the resident size the last release left (at a file's end or over the threshold)

# Every program the suite compiles goes to the persistent cache, not only those over JAX's 1 s threshold (which
# JAX applies when JAX_COMPILATION_CACHE_DIR is set, as .ci/run does; the package's own default is 0): each
# file's programs are released when it ends (below), and a NUTS fit alone compiles some 450 small programs of
# 20-40 ms. Set before JAX is imported, so that the workers' subprocesses (the CLI tests) inherit it too.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def _physical_memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (AttributeError, ValueError, OSError):
        return None


def auto_num_workers(cpus: int | None, memory_gb: float | None, gb_per_worker: float = GB_PER_WORKER) -> int:
    """Workers for ``-n auto``: ``min(cpus, memory_gb // gb_per_worker)``, at least 1; an unknown CPU count
    or memory does not limit.

    >>> auto_num_workers(2, 24.0), auto_num_workers(16, 128.0), auto_num_workers(16, 8.0), auto_num_workers(None, None)
    (2, 16, 1, 1)
    """
    n = cpus if cpus else 1
    if memory_gb is not None:
        n = min(n, int(memory_gb // gb_per_worker))
    return max(1, n)


def pytest_xdist_auto_num_workers(config):
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # pytest-xdist reads its own variable
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    return auto_num_workers(cpus, _physical_memory_gb())


def _release() -> None:
    """Free the compiled programs and note the resident size this leaves (:func:`_release_above_threshold`)."""
    import gc

    import jax

    from numpyro_clustermass.inference.epochs import clear_cache

    clear_cache()
    jax.clear_caches()
    gc.collect()
    if (_resident_gb() or 0.0) > TRIM_ABOVE_GB:
        _trim_heap()
    _after_release["gb"] = _resident_gb() or 0.0


def _trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``): what a release frees otherwise
    stays resident in the worker, which then peaks higher (a no-op where the C library has no ``malloc_trim``)."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _resident_gb() -> float | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (OSError, ValueError, IndexError):
        return None


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Free what a test file compiled when it ends: JAX's in-memory caches and the compiled training methods
    kept for repeated fits. A worker otherwise holds every program of every file it ran (6.5 GB by the end of
    the default suite in one process); a program needed again is read back from the persistent cache."""
    yield
    _release()


@pytest.fixture(autouse=True)
def _release_above_threshold():
    """Also free them after a test that leaves the worker above :data:`RELEASE_ABOVE_GB` resident and
    :data:`RELEASE_GROWTH_GB` above where the last release left it (what a release cannot return to the system
    does not make every later test release)."""
    yield
    rss = _resident_gb()
    if rss is not None and rss > max(RELEASE_ABOVE_GB, _after_release["gb"] + RELEASE_GROWTH_GB):
        _release()
