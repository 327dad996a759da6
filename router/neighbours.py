"""Neighbour search over the router's memory, without torch (numpy + faiss-cpu).

The neighbour head and the calibrated spread need, per prompt, the k memory rows whose keys are
most cosine-similar to its pooled embedding (``router.layer.neighbour_losses``,
``router.selection.neighbour_stats``). Scanning every row costs O(rows · dim) per prompt, up to
50,000 × 1,152; :class:`NeighbourIndex` keeps that exact scan for small memories and above
``exact_up_to`` rows switches to a faiss inverted-file index over the fp16 keys (numbers and the
choice: docs/benchmarks.md, "Neighbour search (issue 11)"; ``python -m benchmarks.neighbour_search``).

The numpy twins :func:`neighbour_sums`, :func:`neighbour_mean` and :func:`neighbour_mean_std` turn the
neighbours into the same predictions as the torch functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

Losses = TypeVar("Losses", np.ndarray, "torch.Tensor")

__all__ = ["EXACT_UP_TO", "NeighbourIndex", "exact_neighbours", "neighbour_mean", "neighbour_mean_std",
           "neighbour_sums", "recall_at_k", "shrunk_mean"]

EXACT_UP_TO = 16_384
"""Memories with at most this many rows are scanned exactly (a float32 copy of the keys, one BLAS
matmul): there the scan costs ≤ ~3 ms per prompt and beats the index on batches of 32, its answers
are the torch head's, while the index's routing decisions moved for 1–10 % of queries; the copy stays
≤ 72 MB (dim 1,152). Measured: docs/benchmarks.md, "Neighbour search (issue 11)"."""

THREADS = 1
"""faiss (OpenMP) threads, set on every search (OpenMP's setting is per process). One: the daemon runs
on 2 cores with its HTTP threads beside the search, and OpenMP's spinning workers would take the core
those need; a single prompt's probes are scanned on one thread anyway (faiss splits across queries).
The exact scan uses numpy's BLAS, whose threads the process sets (threadpoolctl / OPENBLAS_NUM_THREADS);
the benchmark limits both to ``--threads``."""

NPROBE_DIVISOR = 4
"""A query scans a quarter of the inverted lists. On keys grown from real MiniLM embeddings to 50,000
rows (dim 1,152): at 1/8, recall@100 0.991 and the k=100 neighbour mean's argmin (the routing decision)
moved for 1.6 % of queries; at 1/4, 0.998 and 0.8 % (7× faster than the scan); at 1/2, 1.0 and 0 % but
only 2.5× faster (dim 384: 0.987 and 3.9 % at 1/4). See docs/benchmarks.md, "Neighbour search (issue 11)"."""
ADD_CHUNK = 8192
KMEANS_ITERATIONS = 10
TRAIN_POINTS_PER_LIST = 64
"""k-means trains the √rows lists on a seeded sample of 64 rows per list (14k of 50k rows): 6–8 s to
build at 50,000 × 1,152 on one core of the dev box (4·√rows lists on every row took 73 s)."""


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(B, N) scores → (B, k) column indices, highest first."""
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1).astype(np.int64)


def exact_neighbours(keys: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The brute-force answer: (B, k) rows of ``keys`` by descending cosine similarity (k clamped to the rows)."""
    keys, queries = _check(keys, queries)
    return _top_k(_unit(queries) @ np.asarray(keys, dtype=np.float32).T, max(1, min(int(k), keys.shape[0])))


def _check(keys: np.ndarray, queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    keys = np.asarray(keys)
    if keys.ndim != 2 or keys.shape[0] == 0 or keys.shape[1] == 0:
        raise ValueError(f"neighbour keys must be a non-empty (rows, dim) array, got shape {keys.shape}")
    if queries is None:
        return keys, keys[:0]
    queries = np.asarray(queries)
    if queries.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries must be (batch, {keys.shape[1]}), got shape {queries.shape}")
    return keys, queries


class NeighbourIndex:
    """The k most cosine-similar memory rows of each query.

    Up to ``exact_up_to`` rows: an exact scan (a float32 copy of the keys, one BLAS matmul and a
    partial sort). Above it: a faiss inverted-file index (``faiss-ivf``) whose stored vectors are the
    keys in fp16, i.e. exactly the router's fp16 memory keys, so every similarity it computes is the
    exact one and its answers differ from the scan only where a true neighbour lies in an inverted
    list that was not probed. It holds its own copy (rows × dim × 2 bytes); the caller need not keep
    the keys.
    """

    def __init__(self, kind: str, rows: int, dim: int, exact: np.ndarray | None, index: Any,
                 params: dict[str, Any]):
        self._kind = kind
        self._rows = rows
        self._dim = dim
        self._exact = exact
        self._index = index
        self._params = params

    @classmethod
    def build(cls, keys: np.ndarray, *, exact_up_to: int = EXACT_UP_TO, seed: int = 0, threads: int = THREADS,
              nlist: int | None = None, nprobe: int | None = None) -> NeighbourIndex:
        """Index ``keys`` (rows, dim), unit-norm (fp16 as the router stores them, or float32).

        The same keys and seed give the same index and answers. ``nlist`` (inverted lists, default
        ≈ √rows) and ``nprobe`` (lists scanned per query, default ``nlist / 4``) apply only above
        ``exact_up_to`` rows.
        """
        keys = _check(keys)[0]
        if threads < 1:
            raise ValueError(f"threads must be ≥ 1, got {threads}")
        rows, dim = keys.shape
        if not all(np.isfinite(keys[i:i + ADD_CHUNK]).all() for i in range(0, rows, ADD_CHUNK)):
            raise ValueError("neighbour keys contain NaN or infinity")
        if rows <= exact_up_to:
            data = np.ascontiguousarray(keys, dtype=np.float32)
            return cls("exact", rows, dim, data, None, {"threads": threads, "bytes": data.nbytes})
        import faiss

        faiss.omp_set_num_threads(threads)
        lists = int(nlist) if nlist else int(min(1024, max(1, round(np.sqrt(rows)))))
        if not 1 <= lists <= rows:
            raise ValueError(f"nlist must be in [1, rows={rows}], got {lists}")
        probes = min(lists, int(nprobe) if nprobe else max(1, -(-lists // NPROBE_DIVISOR)))
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, lists, faiss.ScalarQuantizer.QT_fp16,
                                              faiss.METRIC_INNER_PRODUCT)
        index.by_residual = False  # store the keys themselves (fp16: the router's own keys, no rounding)
        index.cp.seed = int(seed)
        index.cp.niter = KMEANS_ITERATIONS
        # k-means on a seeded sample; the keys go in as float32 a chunk at a time, so that building never
        # holds a float32 copy of the whole memory (220 MB at 50,000 × 1,152)
        sample = np.sort(np.random.default_rng(seed).permutation(rows)[:lists * TRAIN_POINTS_PER_LIST])
        index.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST
        index.train(np.ascontiguousarray(keys[sample], dtype=np.float32))
        for start in range(0, rows, ADD_CHUNK):
            index.add(np.ascontiguousarray(keys[start:start + ADD_CHUNK], dtype=np.float32))
        return cls("faiss-ivf", rows, dim, None, index,
                   {"nlist": lists, "nprobe": probes, "codes": "fp16", "threads": threads, "seed": int(seed),
                    "bytes": int(rows * dim * 2 + lists * dim * 4 + rows * 8)})

    @property
    def kind(self) -> str:
        """``"exact"`` (a full scan) or ``"faiss-ivf"`` (inverted lists over the fp16 keys)."""
        return self._kind

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def dim(self) -> int:
        return self._dim

    def describe(self) -> dict[str, object]:
        """kind, rows, dim and the index's parameters (``bytes``: its approximate memory)."""
        return {"kind": self._kind, "rows": self._rows, "dim": self._dim, **self._params}

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(B, k) int64 row indices, most similar first; k is clamped to the rows; queries need not be unit-norm."""
        queries = np.asarray(queries)
        if queries.ndim != 2 or queries.shape[1] != self._dim:
            raise ValueError(f"queries must be (batch, {self._dim}), got shape {queries.shape}")
        k = max(1, min(int(k), self._rows))
        unit = _unit(queries)
        if self._exact is not None:
            return _top_k(unit @ self._exact.T, k)
        import faiss

        faiss.omp_set_num_threads(self._params["threads"])
        probes = faiss.SearchParametersIVF()
        probes.nprobe = self._params["nprobe"]
        found = self._index.search(unit, k, params=probes)[1]
        short = (found < 0).any(axis=1)
        if short.any():  # fewer than k rows in the probed lists: probe every list for those queries
            every = faiss.SearchParametersIVF()
            every.nprobe = self._index.nlist
            found[short] = self._index.search(unit[short], k, params=every)[1]
        return found.astype(np.int64, copy=False)

    def with_nprobe(self, nprobe: int) -> NeighbourIndex:
        """The same ``faiss-ivf`` index scanning ``nprobe`` lists per query (shares the index; no rebuild)."""
        if self._kind != "faiss-ivf" or not 1 <= int(nprobe) <= self._params["nlist"]:
            raise ValueError(f"nprobe must be in [1, nlist] of a faiss-ivf index; got {nprobe} for {self.describe()}")
        return NeighbourIndex(self._kind, self._rows, self._dim, None, self._index,
                              {**self._params, "nprobe": int(nprobe)})

    def keys(self) -> np.ndarray:
        """The indexed keys as float32 (rows, dim) (a copy for ``faiss-ivf``: for checks, not the request path)."""
        if self._exact is not None:
            return self._exact
        self._index.make_direct_map()
        return np.asarray(self._index.reconstruct_n(0, self._rows), dtype=np.float32)


def recall_at_k(index: NeighbourIndex, queries: np.ndarray, k: int) -> float:
    """Mean fraction of each query's exact k nearest rows (a full scan) that ``index`` returns among its k."""
    k = max(1, min(int(k), index.rows))
    got = index.search(queries, k)
    truth = exact_neighbours(index.keys(), queries, k)
    hits = [np.intersect1d(a, b, assume_unique=True).size for a, b in zip(got, truth, strict=True)]
    return float(np.mean(hits) / k) if hits else 1.0


# ---- numpy twins of the torch post-processing ---------------------------------------------
def _gather(losses: np.ndarray, nearest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    losses = np.asarray(losses, dtype=np.float32)
    nearest = np.asarray(nearest)
    if losses.ndim != 2 or nearest.ndim != 2 or nearest.shape[1] == 0:
        raise ValueError(f"losses must be (rows, experts) and nearest (batch, k ≥ 1); got {losses.shape}, "
                         f"{nearest.shape}")
    values = losses[nearest]  # (B, k, E)
    seen = ~np.isnan(values)
    return np.where(seen, values, np.float32(0)), seen


def neighbour_sums(losses: np.ndarray, nearest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum and count of the observed losses over each query's neighbours, (B, E) each
    (``router.layer.neighbour_sums`` given the same neighbours)."""
    filled, seen = _gather(losses, nearest)
    return filled.sum(axis=1), seen.sum(axis=1).astype(np.float32)


def shrunk_mean(total: Losses, count: Losses, prior: Losses, kappa: float) -> Losses:
    """(Σ observed + κ · prior) / (count + κ): the neighbour mean shrunk toward ``prior`` as if κ more
    neighbours had observed it (``RouterConfig.head_shrink``); ``prior`` where none observed the expert.
    Plain arithmetic, so the torch router, the numpy serving path and the head selection share it."""
    return (total + kappa * prior) / (count + kappa)


def neighbour_mean(losses: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """Mean observed loss over each query's neighbours, (B, E); NaN where none observed an expert
    (``router.layer.neighbour_losses`` given the same neighbours)."""
    total, count = neighbour_sums(losses, nearest)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.float32(np.nan)).astype(np.float32)


def neighbour_mean_std(losses: np.ndarray, nearest: np.ndarray, ks: Sequence[int],
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each k: (mean, std) of the observed losses of the first k of ``nearest`` (sorted most
    similar first, as :meth:`NeighbourIndex.search` returns them), (B, E) each; NaN where none of
    them observed an expert, std 0 where one did (``router.selection.neighbour_stats``)."""
    filled, seen = _gather(losses, nearest)
    total, squares, count = filled.cumsum(1), (filled ** 2).cumsum(1), seen.astype(np.float32).cumsum(1)
    nan = np.float32(np.nan)
    out = []
    for k in ks:
        i = max(1, min(int(k), nearest.shape[1])) - 1
        c = count[:, i]
        safe = np.maximum(c, 1)
        mean = np.where(c > 0, total[:, i] / safe, nan)
        var = np.maximum(squares[:, i] / safe - np.nan_to_num(mean) ** 2, 0)
        out.append((mean.astype(np.float32), np.where(c > 0, np.sqrt(var), nan).astype(np.float32)))
    return out
