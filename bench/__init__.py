"""Highwater benchmarks: ingest, serving latency, freshness, training sets, replay (each against a baseline).

Each benchmark starts a local stack of its own (temporary state directory, free ports), measures the
pipeline and a same-run baseline on the same machine, and writes ``bench/results/<name>.md`` and
``.json`` (plus a PNG plot where one helps). See ``bench/README.md``.

Example:
    $ uv run python -m bench.ingest --count 200000
"""
