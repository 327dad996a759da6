"""Neighbour search as memory grows (issue 11): the exact scan against the faiss indexes.

    nice -n 10 python -m benchmarks.neighbour_search [--rows 5500,50000] [--dims 384,1152] [--json OUT]

Keys are clustered unit vectors shaped like pooled MiniLM embeddings (a shared direction, topics,
sub-topics, low-rank variation within a sub-topic, a little isotropic noise), stored fp16 as the
router stores them; queries are held-out draws from the same distribution. Each memory row's
losses (9 experts, 10 % unobserved) are a smooth function of its topic, sub-topic and position plus
noise, so the expert with the lowest neighbour-mean loss (what the neighbour head routes to) is a
meaningful thing to agree on. Per (rows, dim, kind): build seconds, milliseconds per batch of 1 and
of 32 queries, recall@10/50/100 against the exact scan, and the share of queries whose
neighbour-mean argmin (k = 10 and k = 100, the product's default) equals the exact scan's; the
exact scan is the baseline of the same run, with the speed-up over it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from router.neighbours import THREADS, NeighbourIndex, exact_neighbours, neighbour_mean

EXPERTS = 9
QUERIES = 256


def clustered_keys(rows: int, dim: int, seed: int, *, topics: int = 48, subtopics: int = 12,
                   rank: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """(rows, dim) unit fp16 keys and each row's sub-topic id. The centres depend only on ``dim``
    (so keys and queries drawn with different seeds share them); ``seed`` draws the rows."""
    base = np.random.default_rng([dim, 7])
    common = base.normal(size=dim)
    topic = base.normal(size=(topics, dim))
    sub = base.normal(size=(topics * subtopics, dim))
    basis = np.linalg.qr(base.normal(size=(dim, rank)))[0].T * np.sqrt(dim)  # (rank, dim), rows of norm √dim
    rng = np.random.default_rng(seed)
    t = rng.integers(0, topics, rows)
    s = t * subtopics + rng.integers(0, subtopics, rows)
    x = 1.2 * common + 0.9 * topic[t] + 0.6 * sub[s] + 0.5 * (rng.normal(size=(rows, rank)) / np.sqrt(rank)) @ basis
    x += 0.35 * rng.normal(size=(rows, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16), s


def simulated_losses(keys: np.ndarray, clusters: np.ndarray, seed: int) -> np.ndarray:
    """(rows, EXPERTS) losses: per-sub-topic expert strengths + a smooth function of the key + noise, 10 % NaN."""
    base = np.random.default_rng([keys.shape[1], 11])
    strength = base.normal(scale=0.3, size=(int(clusters.max()) + 1, EXPERTS))
    direction = base.normal(size=(keys.shape[1], EXPERTS)) / np.sqrt(keys.shape[1])
    rng = np.random.default_rng(seed)
    y = 1.0 + strength[clusters] + 0.5 * np.tanh(4 * keys.astype(np.float32) @ direction)
    y += rng.normal(scale=0.4, size=y.shape)
    y[rng.random(y.shape) < 0.1] = np.nan
    return y.astype(np.float32)


def per_batch_ms(search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, batch: int,
                 budget_s: float = 1.5) -> float:
    """Median milliseconds per call over consecutive batches (at least 3 calls, about ``budget_s``)."""
    search(queries[:batch])  # warm-up
    times: list[float] = []
    started = time.perf_counter()
    i = 0
    while len(times) < 3 or (time.perf_counter() - started < budget_s and len(times) < 200):
        q = np.take(queries, range(i, i + batch), axis=0, mode="wrap")
        t = time.perf_counter()
        search(q)
        times.append(time.perf_counter() - t)
        i += batch
    return float(np.median(times) * 1000)


def agreement(losses: np.ndarray, got: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Share of queries whose neighbour-mean argmin over the first k neighbours equals the exact one's."""
    a, b = neighbour_mean(losses, got[:, :k]), neighbour_mean(losses, truth[:, :k])
    pick = lambda m: np.argmin(np.where(np.isnan(m), np.inf, m), axis=1)  # noqa: E731
    return float(np.mean(pick(a) == pick(b)))


def recall(got: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([np.intersect1d(a[:k], b[:k]).size / k for a, b in zip(got, truth, strict=True)]))


def data(rows: int, dim: int, seed: int, embeddings: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys fp16, sub-topic id per key, held-out queries float32, not unit-norm)."""
    if embeddings is None:
        keys, clusters = clustered_keys(rows, dim, seed)
        queries = clustered_keys(QUERIES, dim, seed + 1000)[0].astype(np.float32)
    else:
        keys, clusters, queries = real_keys(embeddings, rows, dim, seed)
    queries = queries * np.float32(1.7) + np.float32(0.01) * np.random.default_rng(seed).normal(
        size=queries.shape).astype(np.float32)
    return keys, clusters, queries


def real_keys(path: Path, rows: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled embeddings from an .npy file (n, ≥ dim; the last ``dim`` columns are used): the last
    QUERIES rows are the queries, the others the memory, grown to ``rows`` by perturbed copies
    (cosine ≈ 0.9 to their original). The "cluster" of a row is its original (for the losses)."""
    x = np.load(path)[:, -dim:].astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    memory, queries = x[:-QUERIES], x[-QUERIES:]
    rng = np.random.default_rng(seed)
    origin = np.arange(rows) % len(memory)
    keys = memory[origin] + (np.arange(rows) >= len(memory))[:, None] * rng.normal(
        scale=0.5 / np.sqrt(dim), size=(rows, dim)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    # the losses' "sub-topic": 256 k-means-free groups by the sign pattern of 8 random projections
    groups = (memory @ rng.normal(size=(dim, 8)) > 0) @ (1 << np.arange(8))
    return keys.astype(np.float16), groups[origin], queries


def embed_dataset(dataset: Path, out: Path, max_length: int = 128) -> None:
    """Write the MiniLM pooled embeddings (mean of each of the last 3 layers, concatenated: dim 1,152)
    of a dataset's train then test prompts to ``out`` (.npy), as ``--embeddings`` reads them."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from benchmarks.data import load_dataset
    from store.settings import default_backbone

    train, test, _ = load_dataset(dataset)
    prompts = train.prompts + test.prompts
    tokenizer = AutoTokenizer.from_pretrained(default_backbone())
    model = AutoModel.from_pretrained(default_backbone()).eval()
    order = np.argsort([len(p) for p in prompts])
    pooled = np.zeros((len(prompts), 3 * int(model.config.hidden_size)), np.float32)
    with torch.no_grad():
        for start in range(0, len(prompts), 64):
            idx = order[start:start + 64]
            batch = tokenizer([prompts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt")
            weights = batch["attention_mask"].unsqueeze(-1).float()
            states = model(**batch, output_hidden_states=True).hidden_states[-3:]
            pooled[idx] = torch.cat([(h * weights).sum(1) / weights.sum(1) for h in states], dim=-1).numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, pooled)


def measure(rows: int, dim: int, seed: int, threads: int, hnsw: bool, embeddings: Path | None,
            ) -> list[dict[str, object]]:
    keys, clusters, queries = data(rows, dim, seed, embeddings)
    losses = simulated_losses(keys, clusters, seed)
    truth = exact_neighbours(keys, queries, 100)
    results: list[dict[str, object]] = []
    base: dict[str, float] = {}
    lists = int(min(1024, max(1, round(np.sqrt(rows)))))
    ivf: NeighbourIndex | None = None
    ivf_build = 0.0
    for label in ["exact", "faiss-ivf nprobe=nlist/2", "faiss-ivf nprobe=nlist/4 (default)",
                  "faiss-ivf nprobe=nlist/8"] + (["faiss-hnsw"] if hnsw else []):
        started = time.perf_counter()
        if label == "faiss-hnsw":
            search = hnsw_search(keys, threads)
            described: dict[str, object] = {"kind": "faiss-hnsw", "M": 32, "efConstruction": 80, "efSearch": 256,
                                            "codes": "fp16"}
        else:
            if label == "exact":
                index = NeighbourIndex.build(keys, exact_up_to=rows, threads=threads)
            else:
                if ivf is None:  # built once; the variants differ only in the lists each query scans
                    ivf = NeighbourIndex.build(keys, exact_up_to=0, seed=seed, threads=threads)
                    ivf_build = time.perf_counter() - started
                index = ivf.with_nprobe(max(1, -(-lists // int(label.split("/")[1].split()[0]))))
            described = index.describe()
            search = partial(index.search, k=100)
        build_s = ivf_build if label.startswith("faiss-ivf") else time.perf_counter() - started
        got = search(queries)
        row: dict[str, object] = {
            "rows": rows, "dim": dim, "variant": label, "index": described, "build_s": round(build_s, 2),
            "ms_batch_1": round(per_batch_ms(search, queries, 1), 3),
            "ms_batch_32": round(per_batch_ms(search, queries, 32), 2),
            "recall_at_10": round(recall(got, truth, 10), 4), "recall_at_50": round(recall(got, truth, 50), 4),
            "recall_at_100": round(recall(got, truth, 100), 4),
            "argmin_agree_k10": round(agreement(losses, got, truth, 10), 4),
            "argmin_agree_k100": round(agreement(losses, got, truth, 100), 4),
        }
        if label == "exact":
            base = {"1": float(row["ms_batch_1"]), "32": float(row["ms_batch_32"])}  # type: ignore[arg-type]
        row["speedup_batch_1"] = round(base["1"] / float(row["ms_batch_1"]), 1)  # type: ignore[arg-type]
        row["speedup_batch_32"] = round(base["32"] / float(row["ms_batch_32"]), 1)  # type: ignore[arg-type]
        results.append(row)
        print(format_row(row), flush=True)
    return results


def hnsw_search(keys: np.ndarray, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """A faiss HNSW graph over the fp16 keys, for comparison only (not offered by NeighbourIndex)."""
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexHNSWSQ(keys.shape[1], faiss.ScalarQuantizer.QT_fp16, 32,  # type: ignore[arg-type]
                              faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 80
    vectors = keys.astype(np.float32)
    index.train(vectors)
    index.add(vectors)
    index.hnsw.efSearch = 256

    def search(q: np.ndarray) -> np.ndarray:
        unit = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
        return np.asarray(index.search(unit, 100)[1])
    return search


def format_row(r: dict[str, object]) -> str:
    size = r["index"].get("bytes") if isinstance(r["index"], dict) else None
    mb = f"{size / 2**20:.0f}" if size else "–"
    return (f"| {r['rows']:,} | {r['dim']} | {r['variant']} | {mb} | {r['build_s']} | {r['ms_batch_1']} | "
            f"{r['ms_batch_32']} | {r['speedup_batch_1']}× / {r['speedup_batch_32']}× | {r['recall_at_10']} | "
            f"{r['recall_at_50']} | {r['recall_at_100']} | {r['argmin_agree_k10']} | {r['argmin_agree_k100']} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="5500,50000", help="memory sizes, comma-separated")
    parser.add_argument("--dims", default="384,1152", help="key dimensions, comma-separated")
    parser.add_argument("--threads", type=int, default=THREADS, help="faiss/BLAS threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hnsw", action="store_true", help="also build a faiss HNSW graph (slow to build)")
    parser.add_argument("--embeddings", type=Path,
                        help="real pooled embeddings (.npy, n × ≥ dim) instead of the synthetic keys")
    parser.add_argument("--embed-from", type=Path, metavar="DATASET",
                        help="first write --embeddings from this dataset's prompts with MiniLM, if it does not exist")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    if args.embed_from is not None:
        if args.embeddings is None:
            parser.error("--embed-from needs --embeddings (where to write them)")
        if not args.embeddings.is_file():
            embed_dataset(args.embed_from, args.embeddings)

    print("| rows | dim | variant | MB | build s | ms / batch 1 | ms / batch 32 | speed-up (1 / 32) | recall@10 | "
          "recall@50 | recall@100 | argmin agree k=10 | k=100 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    results: list[dict[str, object]] = []
    with threadpool_limits(args.threads):
        for dim in (int(d) for d in args.dims.split(",")):
            for rows in (int(r) for r in args.rows.split(",")):
                results += measure(rows, dim, args.seed, args.threads, args.hnsw, args.embeddings)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": args.threads, "seed": args.seed,
                                          "embeddings": str(args.embeddings or "synthetic"), "results": results},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
