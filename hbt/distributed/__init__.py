"""Beyond one machine, on Ray: ``build`` (hbt-index build --ray), ``search`` (segments held by actors),
``corpus`` (the corpus read by Ray Data) and ``cluster`` (connecting, errors).

These are the only modules that import ray; the rest of hbt never does.
"""

try:
    import ray  # noqa: F401
except ImportError as e:
    raise ImportError("hbt's Ray modules need ray: pip install 'hbt[ray]'") from e
