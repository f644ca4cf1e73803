"""Writes N random unit vectors (1024-d) as `animelens index import-vectors` JSON lines,
labelled with 50 fake characters, to stdout."""
import json, random, sys

n = int(sys.argv[1])
random.seed(7)
centres = [[random.gauss(0, 1) for _ in range(1024)] for _ in range(50)]
for i in range(n):
    c = i % 50
    v = [x + random.gauss(0, 1.5) for x in centres[c]]
    norm = sum(x * x for x in v) ** 0.5
    print(json.dumps({
        "source": f"synthetic/{i}.png",
        "labels": {"character": f"char{c:02d}"},
        "content_hash": f"{i:016x}",
        "vector": [round(x / norm, 5) for x in v],
    }))
