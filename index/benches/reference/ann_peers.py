#!/usr/bin/env python3
"""hnswlib and faiss's HNSW on exactly the vectors `animelens bench index --vectors` indexes.

Usage: ann_peers.py ITEMS.npy QUERIES.npy [--m 16] [--ef-construction 200]
                    [--efs 16,32,64,128] [--threads 1,2] [--csv OUT.csv]

Both libraries build with the same M and ef_construction as the catalogue (inner-product space on
normalised rows, so the neighbours are the cosine neighbours), on all cores, then answer every
query at each ef with 1 and 2 query threads. Recall@10 is by id against the exact top 10 (numpy
brute force), as in `animelens bench index`. QPS counts whole batches of single-vector calls
shared out among the threads, the way a service answers one upload at a time: hnswlib's and
faiss's batch calls parallelise inside one call instead, so each thread here issues one query per
call. Rows are appended to --csv as engine,precision,m,ef_construction,ef,threads,recall_at_10,qps.
"""

import argparse
import importlib.metadata
import sys
import threading
import time

import numpy as np


def exact_top10(items, queries):
    out = np.empty((len(queries), 10), dtype=np.int64)
    for start in range(0, len(queries), 256):
        scores = queries[start:start + 256] @ items.T
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        out[start:start + 256] = top
    return out


def recall(found, truth):
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))


def timed(search_one, queries, threads):
    """Every query through search_one, shared out among `threads` threads; (results, QPS)."""
    results = [None] * len(queries)

    def work(t):
        for i in range(t, len(queries), threads):
            results[i] = search_one(queries[i])

    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results, len(queries) / (time.perf_counter() - started)


def hnswlib_engine(items, m, efc):
    import hnswlib

    index = hnswlib.Index(space="ip", dim=items.shape[1])
    index.init_index(max_elements=len(items), M=m, ef_construction=efc, random_seed=1)
    index.add_items(items, np.arange(len(items)))

    def at(ef):
        index.set_ef(ef)
        index.set_num_threads(1)
        return lambda q: index.knn_query(q[None, :], k=10)[0][0]

    return f"hnswlib {importlib.metadata.version('hnswlib')}", at


def faiss_engine(items, m, efc):
    import faiss

    index = faiss.IndexHNSWFlat(items.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = efc
    index.add(items)
    faiss.omp_set_num_threads(1)

    def at(ef):
        params = faiss.SearchParametersHNSW(efSearch=ef)
        return lambda q: index.search(q[None, :], 10, params=params)[1][0]

    return f"faiss {faiss.__version__}", at


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("items")
    ap.add_argument("queries")
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--efs", default="16,32,64,128")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--engines", default="hnswlib,faiss")
    ap.add_argument("--csv")
    args = ap.parse_args()

    def load(path):
        a = np.load(path).astype(np.float32)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    items, queries = load(args.items), load(args.queries)
    truth = exact_top10(items, queries)
    efs = [int(e) for e in args.efs.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    builders = {"hnswlib": hnswlib_engine, "faiss": faiss_engine}
    rows = []
    for name in args.engines.split(","):
        started = time.perf_counter()
        label, at = builders[name](items, args.m, args.ef_construction)
        build = time.perf_counter() - started
        print(f"{label}: built {len(items)} x {items.shape[1]} in {build:.1f} s", file=sys.stderr)
        for ef in efs:
            search_one = at(ef)
            for t in threads:
                found, qps = timed(search_one, queries, t)
                r = recall(found, truth)
                rows.append(f"{name},f32,{args.m},{args.ef_construction},{ef},{t},{r:.4f},{qps:.1f}")
                print(f"{label} ef {ef} threads {t}: recall@10 {r:.4f}, {qps:.0f} QPS", file=sys.stderr)
    if args.csv:
        with open(args.csv, "a") as f:
            f.write("\n".join(rows) + "\n")
    else:
        print("\n".join(rows))


if __name__ == "__main__":
    main()
