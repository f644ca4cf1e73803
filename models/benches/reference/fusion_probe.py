"""Which features generalise to characters a model never saw? A research probe (BENCHMARKS,
"Which layer generalises"), not the product's evaluation (that is `animelens eval --unseen`).

It re-states the unseen-character protocols of `models/src/generalisation.rs` in numpy (k-shot
nearest-centroid enrolment over all characters, 20 draws; open-set AUROC of the best training
centroid's cosine and the unknown-rejection rate at 5% known rejected) so that any weighted
concatenation of unit vectors, `[sqrt(w1) f1, sqrt(w2) f2, ...]`, can be scored without building
it into the model first. Features: the network embedding and pooled Inception blocks written by
the `pooled_blocks` example, and `pal`, the 144-bin palette of `models/src/palette.rs`
recomputed here (Pillow's resize differs slightly from the image crate's: within 0.01 of
`eval --palette-weight 1`). A part written `name:weight:w` is whitened first, as
`animelens learn-whitening` does (`Whitening::learn_principal`, shrinkage 1), with the whitening
learned on the seen characters' training pictures.

With `COHORT=LIST:PREFIX` (a picture list and its `pooled_blocks` features, e.g. malportraits'
training nine-tenths), two more columns score the open set cohort-normalised: a query's best
centroid cosine minus its mean cosine to its 50 nearest cohort pictures (a research probe for the
open set; on the shipped model it does not help: `cohort_probe.py`).

    python fusion_probe.py list ../shared/data/holoen > /tmp/holoen.list
    cargo run --release -p animelens-models --example pooled_blocks -- MODEL /tmp/holoen.list /tmp/f inception4b
    python fusion_probe.py score ../shared/data/holoen biboo,gura,kronii,raora /tmp/f 64 \
        emb:1 emb:0.5+pal:0.5 emb:0.25+inception4b:0.25+pal:0.5 emb:0.3+inception4b:0.2:w+pal:0.5:w

Needs numpy and Pillow.
"""
import os
import sys

import numpy as np
from PIL import Image


def holoen_style_images(root):
    """(path, character, is_training) for a `split/character/file` folder, sorted."""
    rows = []
    for split in ("train", "val", "test"):
        base = os.path.join(root, split)
        if not os.path.isdir(base):
            continue
        for character in sorted(os.listdir(base)):
            for f in sorted(os.listdir(os.path.join(base, character))):
                rows.append((os.path.join(base, character, f), character, split == "train"))
    return rows


def palette(path, input_size):
    """models/src/palette.rs: two bands of 8x3x3 HSV bins, Hellinger, unit length."""
    im = Image.open(path)
    if im.mode in ("RGBA", "LA", "P"):
        im = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
    im = im.convert("RGB").resize((input_size, input_size), Image.BILINEAR)
    a = np.asarray(im.resize((64, 64), Image.BILINEAR)).astype(np.float32) / 255
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    mx, mn = a.max(-1), a.min(-1)
    c = mx - mn
    cc = np.maximum(c, 1e-9)
    s = np.where(mx > 0, c / np.maximum(mx, 1e-9), 0)
    h = np.where(
        c == 0,
        0,
        np.where(mx == r, np.mod((g - b) / cc, 6) / 6,
                 np.where(mx == g, ((b - r) / cc + 2) / 6, ((r - g) / cc + 4) / 6)),
    )
    bins = lambda v, n: np.minimum((v * n).astype(int), n - 1)
    idx = (bins(h, 8) * 3 + bins(s, 3)) * 3 + bins(mx, 3)
    hist = np.zeros(144)
    for band in range(2):
        counts = np.bincount(idx[band * 32:(band + 1) * 32].ravel(), minlength=72).astype(float)
        hist[band * 72:(band + 1) * 72] = np.sqrt(counts / counts.sum())
    return hist / np.linalg.norm(hist)


def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def whitening(X, shrinkage=1.0):
    """models/src/whitening.rs, learn_principal: the PCA whitening of X's rows, as a function."""
    mean = X.mean(0)
    eigenvalues, vectors = np.linalg.eigh(np.cov(unit(X - mean).T))
    eigenvalues = np.maximum(eigenvalues, 0)
    return lambda A: unit((A - mean) @ vectors / np.sqrt(eigenvalues + shrinkage * eigenvalues.mean()))


def few_shot(E, y, train, unseen, k, episodes=20, seed=0):
    rng = np.random.default_rng(seed)
    accuracies = []
    for _ in range(episodes):
        centroids = np.zeros((len(unseen), E.shape[1]))
        enrolled = {}
        for c in range(len(unseen)):
            pool = np.where((y == c) & (train | unseen[c]))[0]
            pick = rng.choice(pool, size=min(k, len(pool)), replace=False)
            enrolled[c] = set(pick.tolist())
            centroids[c] = E[pick].sum(0)
        queries = np.array([i for i in range(len(y)) if unseen[y[i]] and i not in enrolled[y[i]]])
        predicted = (E[queries] @ unit(centroids).T).argmax(1)
        accuracies.append((predicted == y[queries]).mean())
    return float(np.mean(accuracies))


def open_set(E, y, train, unseen, cohort=None):
    seen = [c for c in range(len(unseen)) if not unseen[c]]
    centroids = unit(np.stack([E[(y == c) & train].sum(0) for c in seen]))
    best = (E @ centroids.T).max(1)
    if cohort is not None:
        best = best - np.sort(E @ cohort.T, 1)[:, -50:].mean(1)
    known, unknown = best[(~unseen[y]) & (~train)], best[unseen[y]]
    ranks = np.concatenate([known, unknown]).argsort().argsort() + 1
    auroc = (ranks[: len(known)].sum() - len(known) * (len(known) + 1) / 2) / (len(known) * len(unknown))
    return auroc, float((unknown < np.quantile(known, 0.05)).mean())


def seen_recall_at_1(E, y, train, unseen):
    """Leave-one-out recall@1 among the seen characters' non-training pictures (as `eval`)."""
    q = np.where(~unseen[y] & ~train)[0]
    S = E[q] @ E[q].T
    np.fill_diagonal(S, -np.inf)
    return float((y[q][S.argmax(1)] == y[q]).mean())


def score(root, unseen_names, prefix, input_size, specs):
    rows = holoen_style_images(root)
    classes = sorted({r[1] for r in rows})
    y = np.array([classes.index(r[1]) for r in rows])
    train = np.array([r[2] for r in rows])
    unseen = np.array([c in unseen_names for c in classes])
    cohort_list, cohort_prefix = os.environ["COHORT"].split(":") if "COHORT" in os.environ else (None, None)
    features = {}

    def feature(name, paths, prefix):
        if (name, prefix) not in features:
            if name == "pal":
                features[name, prefix] = np.stack([palette(p, input_size) for p in paths])
            else:
                features[name, prefix] = unit(np.load(f"{prefix}-{name}.npy").astype(np.float64))
        return features[name, prefix]

    seen_training = train & ~unseen[y]
    cohort_paths = [l.strip() for l in open(cohort_list)] if cohort_list else None

    def part(name, weight, *options):
        f = feature(name, [r[0] for r in rows], prefix)
        c = feature(name, cohort_paths, cohort_prefix) if cohort_paths else None
        if options == ("w",):
            w = whitening(f[seen_training])
            f, c = w(f), (w(c) if c is not None else None)
        return np.sqrt(float(weight)) * f, (np.sqrt(float(weight)) * c if c is not None else None)

    extra = " AUROC, cohort | rejected, cohort |" if cohort_paths else ""
    print(f"| vector | 1-shot | 5-shot | AUROC | rejected at 5% known | seen recall@1 |{extra}\n"
          f"|---|---|---|---|---|---|{'---|---|' if cohort_paths else ''}")
    for spec in specs:
        parts = [part(*p.split(":")) for p in spec.split("+")]
        E = np.hstack([p[0] for p in parts])
        auroc, rejected = open_set(E, y, train, unseen)
        line = (f"| {spec} | {few_shot(E, y, train, unseen, 1):.3f} | {few_shot(E, y, train, unseen, 5):.3f} "
                f"| {auroc:.3f} | {rejected:.3f} | {seen_recall_at_1(E, y, train, unseen):.3f} |")
        if cohort_paths:
            auroc, rejected = open_set(E, y, train, unseen, np.hstack([p[1] for p in parts]))
            line += f" {auroc:.3f} | {rejected:.3f} |"
        print(line, flush=True)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "list":
        print("\n".join(r[0] for r in holoen_style_images(sys.argv[2])))
    elif len(sys.argv) >= 3 and sys.argv[1] == "list-training":
        # An unlabelled folder's training nine-tenths (models/src/data/unlabelled.rs's hash rule).
        import hashlib
        names = sorted(os.listdir(sys.argv[2]))
        print("\n".join(os.path.join(sys.argv[2], n) for n in names
                        if hashlib.sha256(n.encode()).digest()[0] % 10 != 0))
    elif len(sys.argv) >= 7 and sys.argv[1] == "score":
        score(sys.argv[2], set(sys.argv[3].split(",")), sys.argv[4], int(sys.argv[5]), sys.argv[6:])
    else:
        sys.exit(__doc__)
