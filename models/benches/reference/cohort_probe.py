"""Does cohort normalisation help the shipped model's open set? (issue 13, a research probe)

The open-set score is a query's best centroid cosine; the cohort-normalised score subtracts the
query's mean cosine to its K nearest pictures of a background cohort (malportraits: portraits of
other series). This probe scores both on the shipped demo's fused, whitened vector (embedding
0.5, inception4b 0.3 and palette 0.2, each part whitened on holoen's training pictures, as
`learn-whitening` does), in two protocols:

* holoen, simulated unknowns (the rule `index calibrate` uses): a validation picture is a known
  query against its own character's centroid and an unknown one against the best other centroid;
* Pokémon, a domain the model never saw: the even-numbered half enrolled from its training
  pictures, the odd-numbered half's pictures as unknowns (as `eval --unseen` on Pokémon).

    python models/benches/reference/fusion_probe.py list ../shared/data/holoen > /tmp/holoen.list
    ls ../shared/data/malportraits/images | sed "s|^|../shared/data/malportraits/images/|" > /tmp/mal.list
    python -c "import csv; [print('../shared/data/pokemon/' + r['path']) for r in csv.DictReader(open('../shared/data/pokemon/manifest.csv'))]" > /tmp/pokemon.list
    for s in holoen mal pokemon; do
      cargo run --release -p animelens-models --example pooled_blocks -- models/demo/holoen /tmp/$s.list /tmp/f-$s inception4b
    done
    python models/benches/reference/cohort_probe.py ../shared/data /tmp/f 96

(from the repository root, as the lists' paths are relative to it).

Needs numpy and Pillow (the palette is recomputed from the pictures).
"""
import csv
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fusion_probe import holoen_style_images, palette, unit, whitening

WEIGHTS = {"emb": 0.5, "inception4b": 0.3, "pal": 0.2}


def parts(prefix, paths, size):
    out = {n: unit(np.load(f"{prefix}-{n}.npy").astype(np.float64)) for n in ("emb", "inception4b")}
    out["pal"] = np.stack([palette(p, size) for p in paths])
    return out


def auroc_and_rejection(known, unknown):
    ranks = np.concatenate([known, unknown]).argsort().argsort() + 1
    k, u = len(known), len(unknown)
    auroc = (ranks[:k].sum() - k * (k + 1) / 2) / (k * u)
    return auroc, float((unknown < np.quantile(known, 0.05)).mean())


def main(data, prefix, size):
    rows = holoen_style_images(os.path.join(data, "holoen"))
    classes = sorted({r[1] for r in rows})
    y = np.array([classes.index(r[1]) for r in rows])
    train = np.array([r[2] for r in rows])
    lists = {s: [l.strip() for l in open(f"/tmp/{s}.list")] for s in ("holoen", "mal", "pokemon")}
    raw = {s: parts(f"{prefix}-{s}", lists[s], size) for s in lists}
    white = {n: (whitening(raw["holoen"][n][train]) if n != "emb" else (lambda a: a)) for n in WEIGHTS}
    fused = {s: np.hstack([np.sqrt(w) * white[n](raw[s][n]) for n, w in WEIGHTS.items()]) for s in raw}

    holo = fused["holoen"]
    centroids = unit(np.stack([holo[(y == c) & train].sum(0) for c in range(len(classes))]))
    queries = np.where(~train)[0]
    scores = holo[queries] @ centroids.T
    own = scores[np.arange(len(queries)), y[queries]]
    scores[np.arange(len(queries)), y[queries]] = -9
    other = scores.max(1)

    manifest = list(csv.DictReader(open(os.path.join(data, "pokemon", "manifest.csv"))))
    dex = {r["name"]: int(r["dex"]) for r in manifest}
    names = sorted(dex)
    py = np.array([names.index(r["name"]) for r in manifest])
    ptrain = np.array([r["split"] == "train" for r in manifest])
    odd = np.array([dex[n] % 2 == 1 for n in names])
    pk = fused["pokemon"]
    seen = [c for c in range(len(names)) if not odd[c]]
    best = (pk @ unit(np.stack([pk[(py == c) & ptrain].sum(0) for c in seen])).T).max(1)
    known, unknown = (~odd[py]) & (~ptrain), odd[py]

    def line(name, holo_level, pk_level):
        h = auroc_and_rejection(own - holo_level, other - holo_level)
        p = auroc_and_rejection(best[known] - pk_level[known], best[unknown] - pk_level[unknown])
        print(f"| {name} | {h[0]:.3f} | {h[1]:.3f} | {p[0]:.3f} | {p[1]:.3f} |", flush=True)

    print("| score | holoen AUROC | holoen rejected at 5% known | Pokémon AUROC | Pokémon rejected at 5% known |")
    print("|---|---|---|---|---|")
    line("best centroid cosine", 0.0, np.zeros(len(pk)))
    rng = np.random.default_rng(0)
    cohort_all = fused["mal"]
    for n in (500, 1000, len(cohort_all)):
        cohort = cohort_all[rng.choice(len(cohort_all), n, replace=False)] if n < len(cohort_all) else cohort_all
        for k in (5, 10, 25):
            level = lambda e: np.sort(e @ cohort.T, 1)[:, -k:].mean(1)
            line(f"minus mean of {k} nearest of {n} cohort pictures", level(holo[queries]), level(pk))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
