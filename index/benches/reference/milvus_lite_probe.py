#!/usr/bin/env python3
"""Times milvus-lite searches on 20,000 random 1024-d rows: before and after a flush (unsealed rows
are searched without the HNSW index), and with the character filter on a JSON path against the
same filter on a VarChar field (why the Milvus backend stores `primary_label`). BENCHMARKS.md,
"Storage backends", cites its output.

Usage: index/benches/reference/milvus_lite_probe.py   (runs a milvus-lite server itself; needs
the venv .ci/run makes: ~/.cache/animelens-milvus-venv/bin/python)
"""
import os, random, socket, subprocess, sys, tempfile, time
from pymilvus import MilvusClient, DataType

N, DIM, QUERIES = 20_000, 1024, 20
lite = os.path.join(os.path.dirname(sys.executable), "milvus-lite")
data = tempfile.mkdtemp()
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
server = subprocess.Popen([lite, "server", "--data-dir", data, "--host", "127.0.0.1", "--port", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); break
        except OSError:
            time.sleep(0.1)
    c = MilvusClient(uri=f"http://127.0.0.1:{port}")
    schema = c.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("labels", DataType.JSON)
    schema.add_field("primary_label", DataType.VARCHAR, max_length=128)
    index = c.prepare_index_params()
    index.add_index("embedding", index_type="HNSW", metric_type="IP", params={"M": 16, "efConstruction": 200})
    c.create_collection("probe", schema=schema, index_params=index, consistency_level="Strong")
    rng = random.Random(1)
    def unit():
        v = [rng.gauss(0, 1) for _ in range(DIM)]; n = sum(x * x for x in v) ** 0.5
        return [x / n for x in v]
    for b in range(N // 1000):
        c.insert("probe", [{"id": i, "embedding": unit(), "labels": {"character": f"c{i % 50}"},
                            "primary_label": f"c{i % 50}"} for i in range(b * 1000, (b + 1) * 1000)])
    queries = [unit() for _ in range(QUERIES)]
    def timed(label, filter=""):
        started = time.time()
        for q in queries:
            c.search("probe", data=[q], limit=10, filter=filter, output_fields=["id"],
                     search_params={"params": {"ef": 64}})
        print(f"{label}: {(time.time() - started) / QUERIES * 1000:.0f} ms a search")
    timed("unsealed rows, no filter")
    started = time.time(); c.flush("probe"); print(f"flush: {time.time() - started:.1f} s")
    time.sleep(5)
    timed("flushed, no filter")
    timed('flushed, labels["character"] == "c0"', 'labels["character"] == "c0"')
    timed('flushed, primary_label == "c0"', 'primary_label == "c0"')
finally:
    server.kill()
