"""Postgres re-scoring in the client: decoding every fetched row then packing (before) against scoring the
fetched codes and residuals directly (``coded.scoring_rows`` and ``Codec.similarities``, now).

The shape is the 100k benchmark's defaults (``pgvector_scale.py``): 400 re-scored records of 93 tokens at
128 dims, 32 query tokens, k=10; 8-bit residuals (the Postgres default) and a 66 B rotated codec; synthetic
token vectors with uneven spread by direction. Both paths must return the same ranking; p50 over 15 runs
each, the two paths alternated, twice. No database: this times the numpy part of a search only.

    .venv/bin/python benchmarks/pg_rescoring.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _machine import cpu_flags, machine_info  # noqa: E402

from ragplug.retrievers.late_interaction.codecs import Codec, CodecConfig  # noqa: E402
from ragplug.retrievers.late_interaction.ivf import normalise  # noqa: E402
from ragplug.retrievers.late_interaction.stores.postgres import coded  # noqa: E402
from ragplug.retrievers.late_interaction.twostage import pack, top_k_exact  # noqa: E402

DIM, DOCS, TOKENS, K = 128, 400, 93, 10


def _before(codec: Codec, rows: list, query: np.ndarray) -> list[tuple[int, float]]:
    vectors, starts, lengths = pack([coded.decode_row(codec, n, t, c, DIM) for n, t, c in rows])
    return top_k_exact(query, vectors, starts, lengths, K)


def _now(codec: Codec, rows: list, query: np.ndarray) -> list[tuple[int, float]]:
    vectors, starts, lengths = coded.scoring_rows(codec, rows, DIM)
    return top_k_exact(query, vectors, starts, lengths, K)


def _call(arm: tuple) -> list[tuple[int, float]]:
    return arm[0](*arm[1:])


def main() -> None:
    rng = np.random.default_rng(0)
    topics = rng.standard_normal((50, DIM))[rng.integers(0, 50, 40000)]
    x = normalise((rng.standard_normal((40000, DIM)) * np.geomspace(1, 0.1, DIM) + topics).astype(np.float32))
    out = {"machine": {**machine_info(["numpy", "ragplug"]), "cpu_flags": cpu_flags()}, "rows": []}
    for config in (CodecConfig(kind="residual", nbits=8), CodecConfig(kind="rotated", token_bytes=66)):
        codec = Codec.train(config, x, n_tokens=len(x))
        mats = [x[i * TOKENS : (i + 1) * TOKENS] for i in range(DOCS)]
        rows = [(len(m), c.tokens, c.codes) for m, c in zip(mats, coded.encode_rows(codec, mats), strict=True)]
        query = codec.prepare(x[:32])

        before = (_before, codec, rows, query)
        now = (_now, codec, rows, query)
        same = [d for d, _ in _call(before)] == [d for d, _ in _call(now)]
        times: dict[str, list[float]] = {"before": [], "now": []}
        for _ in range(2):
            for name, run in (("before", before), ("now", now)):
                for _ in range(15):
                    t0 = time.perf_counter()
                    _call(run)
                    times[name].append(time.perf_counter() - t0)
        p50 = {name: round(1000 * float(np.median(t)), 2) for name, t in times.items()}
        row = {"codec": config.kind, "bytes_per_token": codec.bytes_per_token, "same_ranking": same, "p50_ms": p50}
        out["rows"].append(row)
        print(row, flush=True)
    (HERE / "results" / "pg_rescoring.json").write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
