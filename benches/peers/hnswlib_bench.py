"""hnswlib on the same .npy files as `vitrine bench search`: build time (all cores),
recall@k against exact search and single-thread QPS at several ef. One JSON line per M."""
import json, sys, time
import numpy as np
import hnswlib

base_path, q_path = sys.argv[1], sys.argv[2]
k = int(sys.argv[3]) if len(sys.argv) > 3 else 20
efs = [int(x) for x in sys.argv[4].split(",")] if len(sys.argv) > 4 else [20, 30, 40, 60, 80, 120, 160, 240, 320]
ms = [int(x) for x in sys.argv[5].split(",")] if len(sys.argv) > 5 else [16, 32]
base = np.load(base_path).astype(np.float32)
queries = np.load(q_path).astype(np.float32)
base /= np.maximum(np.linalg.norm(base, axis=1, keepdims=True), 1e-12)
queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
scores = queries @ base.T
truth = np.argsort(-scores, axis=1, kind="stable")[:, :k]
for m in ms:
    idx = hnswlib.Index(space="ip", dim=base.shape[1])
    t = time.perf_counter()
    idx.init_index(max_elements=base.shape[0], ef_construction=200, M=m)
    idx.add_items(base, np.arange(base.shape[0]), num_threads=-1)
    build_s = time.perf_counter() - t
    idx.set_num_threads(1)
    runs = []
    for ef in efs:
        idx.set_ef(max(ef, k))
        idx.knn_query(queries[:20], k=k, num_threads=1)
        t = time.perf_counter()
        labels, _ = idx.knn_query(queries, k=k, num_threads=1)
        secs = time.perf_counter() - t
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(labels, truth)])
        # As `vitrine bench search`'s qps_median10: the median time of 10 consecutive
        # queries (one call each, so it includes ~2 µs a query of Python overhead),
        # robust to the time slices other processes take on a shared machine.
        chunks = []
        for i in range(0, len(queries) - 9, 10):
            t = time.perf_counter()
            idx.knn_query(queries[i:i + 10], k=k, num_threads=1)
            chunks.append(time.perf_counter() - t)
        median10 = 10 / float(np.median(chunks)) if chunks else 0.0
        runs.append({"ef": max(ef, k), "recall_at_k": float(recall), "qps": len(queries) / secs, "qps_median10": median10})
    print(json.dumps({"lib": "hnswlib", "M": m, "ef_construction": 200, "n": base.shape[0], "dim": base.shape[1], "build_s": build_s, "runs": runs}))
