"""JAX's persistent compilation cache, switched on by default when the package is imported.

Most of what a user waits for in a fresh process is XLA compiling the package's jit-compiled functions (the
training epoch, the network's forward pass on the grid, the posterior statistics). JAX can keep the compiled
programs in a folder and load them in the next process instead of compiling again; it does so only when a
folder is configured. :func:`configure_default` (called once by ``import numpyro_clustermass``) configures one
unless the user has, or has switched it off with ``NUMPYRO_CLUSTERMASS_COMPILATION_CACHE=0``.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

__all__ = ["compilation_cache_dir", "default_cache_folder", "ENV_VAR", "MIN_COMPILE_TIME_SECS"]

#: Environment variable that switches the package's default cache off (``0``, ``false``, ``no`` or ``off``).
ENV_VAR = "NUMPYRO_CLUSTERMASS_COMPILATION_CACHE"
_OFF = ("0", "false", "no", "off")
#: Programs that take longer than this to compile are cached. JAX's own default, 1 s, leaves out most of what a
#: posterior step compiles (the statistic kernels compiled in 0.25-2.8 s each on the loaded 2-core development
#: machine, the small gathers and joins in 0.05-0.5 s, under a second on an idle one); 0 keeps every program:
#: 107 entries, 0.7 MB for the whole of benchmarks/time_to_first_result.py (fit, posteriors, statistics).
MIN_COMPILE_TIME_SECS = 0.0
_JAX_DEFAULT_MIN_COMPILE_TIME = 1.0


def default_cache_folder() -> Path:
    """``$XDG_CACHE_HOME/numpyro_clustermass/jax``, or ``~/.cache/numpyro_clustermass/jax`` without it."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "numpyro_clustermass" / "jax"


def _user_configured() -> bool:
    return bool(os.environ.get("JAX_COMPILATION_CACHE_DIR")) or bool(jax.config.jax_compilation_cache_dir)


def configure_default() -> str | None:
    """Point JAX's persistent compilation cache at :func:`default_cache_folder` unless configured or off.

    Returns the folder it configured, or None when it left JAX alone: the user set
    ``JAX_COMPILATION_CACHE_DIR`` or ``jax.config.jax_compilation_cache_dir``, ``NUMPYRO_CLUSTERMASS_COMPILATION_CACHE``
    is ``0``/``false``/``no``/``off``, or the folder cannot be created or written (then the cache stays off,
    silently: a read-only home must not break the import).
    """
    if os.environ.get(ENV_VAR, "").strip().lower() in _OFF or _user_configured():
        return None
    folder = default_cache_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    if ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ
            and jax.config.jax_persistent_cache_min_compile_time_secs == _JAX_DEFAULT_MIN_COMPILE_TIME):
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_SECS)
    return str(folder)


def compilation_cache_dir() -> str | None:
    """The folder JAX's persistent compilation cache uses in this process, or None when it is off.

    ``import numpyro_clustermass`` switches the cache on: unless you configured one yourself
    (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config.update("jax_compilation_cache_dir", ...)`` before the
    import), compiled programs are kept in ``$XDG_CACHE_HOME/numpyro_clustermass/jax`` (default
    ``~/.cache/numpyro_clustermass/jax``), so a second Python process loads them instead of compiling again.
    Every program that compiles for longer than :data:`MIN_COMPILE_TIME_SECS` is kept (the posterior kernels
    compile in well under JAX's own threshold of 1 s), unless you set
    ``jax_persistent_cache_min_compile_time_secs`` yourself. Set ``NUMPYRO_CLUSTERMASS_COMPILATION_CACHE=0``
    before the import to leave the cache off; if the folder cannot be created the cache stays off. The folder
    grows with every new program (JAX does not bound it by default); deleting it is always safe.

    Returns
    -------
    str or None
        ``jax.config.jax_compilation_cache_dir`` when JAX's cache is enabled, else None.

    Examples
    --------
    >>> import numpyro_clustermass as ncm
    >>> folder = ncm.compilation_cache_dir()
    >>> folder is None or isinstance(folder, str)
    True
    """
    if not jax.config.jax_enable_compilation_cache:
        return None
    folder = jax.config.jax_compilation_cache_dir
    return str(folder) if folder else None
