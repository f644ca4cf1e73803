//! How well the embedding generalises beyond its training classes, measured on vectors alone:
//! k-shot enrolment of characters the model never saw (nearest centroid over all characters),
//! open-set recognition ("is this anyone we know?": AUROC and the unknown-rejection rate at the
//! threshold that rejects 5% of known images), and score calibration (same- vs
//! different-character cosine distributions and a logistic map from cosine to the probability
//! that two pictures show the same character, so that a confidence of 0.9 means the same thing
//! for every query).
//!
//! Everything here takes L2-normalised embeddings and labels, so each figure can be checked by a
//! hand computation on a few vectors (the tests do).

use rand::{rngs::StdRng, seq::index::sample, SeedableRng};
use serde::{Deserialize, Serialize};

/// The vectors one protocol runs on.
#[derive(Debug, Clone, Default)]
pub struct ProtocolSet {
    /// L2-normalised embeddings.
    pub embeddings: Vec<Vec<f32>>,
    /// Character index per embedding.
    pub character: Vec<usize>,
    /// Whether each embedding is from the training split (enrolment pool of seen characters).
    pub train_split: Vec<bool>,
    /// Per character: true when the model never trained on it.
    pub unseen: Vec<bool>,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Normalised mean of `members`' vectors.
fn centroid(set: &ProtocolSet, members: impl Iterator<Item = usize>) -> Vec<f32> {
    let dim = set.embeddings.first().map_or(0, Vec::len);
    let mut sum = vec![0f32; dim];
    for i in members {
        sum.iter_mut()
            .zip(&set.embeddings[i])
            .for_each(|(s, v)| *s += v);
    }
    let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    sum.iter_mut().for_each(|v| *v /= norm);
    sum
}

/// Index and cosine of the best centroid (centroids that are `None` are not enrolled).
fn best(q: &[f32], centroids: &[Option<Vec<f32>>]) -> Option<(usize, f32)> {
    centroids
        .iter()
        .enumerate()
        .filter_map(|(c, v)| v.as_ref().map(|v| (c, dot(q, v))))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// k-shot enrolment result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FewShotReport {
    /// Images enrolled per character.
    pub shots: usize,
    /// Random enrolment draws averaged.
    pub episodes: usize,
    /// Top-1 over all characters of queries of unseen characters.
    pub unseen_top1: f64,
    /// Unseen-character queries per episode.
    pub unseen_queries: usize,
    /// Top-1 of the seen characters' held-out (non-training) images under the same enrolment.
    pub seen_top1: f64,
}

/// k-shot enrolment by nearest centroid: in each episode every character is enrolled with
/// `shots` random images (seen characters from their training split, unseen ones from all their
/// images); each unseen character's other images, and each seen character's non-training
/// images, are classified among all characters. Characters with fewer than `shots + 1` images
/// are skipped as queries but still enrolled when they have `shots`.
pub fn few_shot(set: &ProtocolSet, shots: usize, episodes: usize, seed: u64) -> FewShotReport {
    let classes = set.unseen.len();
    let mut rng = StdRng::seed_from_u64(seed);
    let pools: Vec<Vec<usize>> = (0..classes)
        .map(|c| {
            (0..set.embeddings.len())
                .filter(|&i| set.character[i] == c && (set.unseen[c] || set.train_split[i]))
                .collect()
        })
        .collect();
    let (mut unseen_hits, mut unseen_n, mut seen_hits, mut seen_n) =
        (0usize, 0usize, 0usize, 0usize);
    for _ in 0..episodes {
        let mut enrolled = vec![false; set.embeddings.len()];
        let centroids: Vec<Option<Vec<f32>>> = pools
            .iter()
            .map(|pool| {
                (pool.len() >= shots && shots > 0).then(|| {
                    let picked: Vec<usize> = sample(&mut rng, pool.len(), shots)
                        .into_iter()
                        .map(|k| pool[k])
                        .collect();
                    picked.iter().for_each(|&i| enrolled[i] = true);
                    centroid(set, picked.into_iter())
                })
            })
            .collect();
        for (i, q) in set.embeddings.iter().enumerate() {
            let c = set.character[i];
            let is_query =
                !enrolled[i] && centroids[c].is_some() && (set.unseen[c] || !set.train_split[i]);
            if !is_query {
                continue;
            }
            let hit = best(q, &centroids).is_some_and(|(b, _)| b == c) as usize;
            if set.unseen[c] {
                unseen_hits += hit;
                unseen_n += 1;
            } else {
                seen_hits += hit;
                seen_n += 1;
            }
        }
    }
    let rate = |h: usize, n: usize| if n == 0 { 0.0 } else { h as f64 / n as f64 };
    FewShotReport {
        shots,
        episodes,
        unseen_top1: rate(unseen_hits, unseen_n),
        unseen_queries: unseen_n / episodes.max(1),
        seen_top1: rate(seen_hits, seen_n),
    }
}

/// Known-versus-unknown recognition on the best-centroid score.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpenSetReport {
    /// Known queries (seen characters' non-training images).
    pub known: usize,
    /// Unknown queries (unseen characters' images and any extra unknown pictures).
    pub unknown: usize,
    /// Area under the ROC curve of "known" by best-centroid cosine.
    pub auroc: f64,
    /// The threshold rejecting at most 5% of known queries.
    pub threshold_at_5pct: f32,
    /// Fraction of unknown queries rejected at that threshold.
    pub unknown_rejected_at_5pct: f64,
    /// Known queries accepted and named correctly at that threshold.
    pub known_correct_at_5pct: f64,
    /// Median best-centroid cosine of known and of unknown queries.
    pub median_known: f32,
    /// See `median_known`.
    pub median_unknown: f32,
}

/// Scores of one open-set run: (best cosine, named correctly) for known queries, best cosine
/// for unknown ones.
#[derive(Debug, Clone, Default)]
pub struct OpenSetScores {
    /// Known queries.
    pub known: Vec<(f32, bool)>,
    /// Unknown queries.
    pub unknown: Vec<f32>,
}

/// The centroid of each seen character over all its training images (`None` for unseen
/// characters and characters without training images): the open-set enrolment.
pub fn training_centroids(set: &ProtocolSet) -> Vec<Option<Vec<f32>>> {
    (0..set.unseen.len())
        .map(|c| {
            let members: Vec<usize> = (0..set.embeddings.len())
                .filter(|&i| set.character[i] == c && set.train_split[i])
                .collect();
            (!set.unseen[c] && !members.is_empty()).then(|| centroid(set, members.into_iter()))
        })
        .collect()
}

/// Seen characters are enrolled with all their training images; their other images are the
/// known queries; every unseen character's image and every vector of `extra_unknown` is an
/// unknown query.
pub fn open_set_scores(set: &ProtocolSet, extra_unknown: &[Vec<f32>]) -> OpenSetScores {
    let centroids = training_centroids(set);
    let mut scores = OpenSetScores::default();
    for (i, q) in set.embeddings.iter().enumerate() {
        let c = set.character[i];
        let Some((b, s)) = best(q, &centroids) else {
            continue;
        };
        if set.unseen[c] {
            scores.unknown.push(s);
        } else if !set.train_split[i] {
            scores.known.push((s, b == c));
        }
    }
    scores.unknown.extend(
        extra_unknown
            .iter()
            .filter_map(|q| best(q, &centroids).map(|(_, s)| s)),
    );
    scores
}

/// Probability that a random known score exceeds a random unknown one (ties count half).
pub fn auroc(known: &[f32], unknown: &[f32]) -> f64 {
    if known.is_empty() || unknown.is_empty() {
        return 0.0;
    }
    let mut all: Vec<(f32, bool)> = known
        .iter()
        .map(|&s| (s, true))
        .chain(unknown.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Mann-Whitney U with average ranks for ties.
    let (mut rank_sum, mut i) = (0f64, 0usize);
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let avg = (i + j + 1) as f64 / 2.0;
        rank_sum += avg * all[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let (k, u) = (known.len() as f64, unknown.len() as f64);
    (rank_sum - k * (k + 1.0) / 2.0) / (k * u)
}

/// The median (upper middle value) of `v`; 0 when empty.
pub fn median(mut v: Vec<f32>) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f32::total_cmp);
    v[v.len() / 2]
}

/// Summarises open-set scores.
pub fn open_set_report(scores: &OpenSetScores) -> OpenSetReport {
    let known: Vec<f32> = scores.known.iter().map(|k| k.0).collect();
    let mut sorted = known.clone();
    sorted.sort_by(f32::total_cmp);
    // Reject when score < t: t is the score of the known query at the 5% quantile.
    let t = sorted.get(sorted.len() * 5 / 100).copied().unwrap_or(0.0);
    let share = |n: usize, of: usize| if of == 0 { 0.0 } else { n as f64 / of as f64 };
    OpenSetReport {
        known: known.len(),
        unknown: scores.unknown.len(),
        auroc: auroc(&known, &scores.unknown),
        threshold_at_5pct: t,
        unknown_rejected_at_5pct: share(
            scores.unknown.iter().filter(|&&s| s < t).count(),
            scores.unknown.len(),
        ),
        known_correct_at_5pct: share(
            scores.known.iter().filter(|k| k.0 >= t && k.1).count(),
            known.len(),
        ),
        median_known: median(known),
        median_unknown: median(scores.unknown.clone()),
    }
}

/// Logistic map from cosine to P(same character): `1 / (1 + exp(−(a·cos + b)))`, fitted with
/// equal total weight on same- and different-character pairs (a prior of one half), so the
/// confidence reads as a likelihood ratio and does not depend on how many characters a
/// catalogue holds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct ScoreCalibration {
    /// Slope.
    pub a: f64,
    /// Offset.
    pub b: f64,
}

impl ScoreCalibration {
    /// The calibrated confidence of a cosine.
    pub fn confidence(&self, cosine: f32) -> f32 {
        (1.0 / (1.0 + (-(self.a * cosine as f64 + self.b)).exp())) as f32
    }
}

/// The cosines of all pairs of a set of embeddings.
#[derive(Debug, Clone, Default)]
pub struct PairCosines {
    /// Pairs with the same label.
    pub same: Vec<f32>,
    /// Pairs with different labels.
    pub different: Vec<f32>,
    /// Per embedding, its best cosine to any other embedding.
    pub best_other_picture: Vec<f32>,
    /// Per embedding, its best cosine to an embedding of another label.
    pub best_other_label: Vec<f32>,
}

/// Cosines of all pairs of `embeddings`, split into same- and different-`labels` pairs, with
/// each embedding's best match, in one pass over the pairs.
pub fn pair_cosines(embeddings: &[Vec<f32>], labels: &[usize]) -> PairCosines {
    let n = embeddings.len();
    let mut out = PairCosines {
        best_other_picture: vec![f32::MIN; n],
        best_other_label: vec![f32::MIN; n],
        ..PairCosines::default()
    };
    for i in 0..n {
        for j in i + 1..n {
            let s = dot(&embeddings[i], &embeddings[j]);
            for k in [i, j] {
                out.best_other_picture[k] = out.best_other_picture[k].max(s);
            }
            if labels[i] == labels[j] {
                out.same.push(s);
            } else {
                out.different.push(s);
                for k in [i, j] {
                    out.best_other_label[k] = out.best_other_label[k].max(s);
                }
            }
        }
    }
    out
}

/// Fits [`ScoreCalibration`] by Newton's method (with step halving) on the weighted log-loss,
/// over the pairs binned into 2,000 cosine bins (millions of pairs fit in milliseconds) and with
/// the cosine standardised (so nearly identical distributions give a flat map, not a diverging one).
pub fn fit_calibration(same: &[f32], different: &[f32]) -> Option<ScoreCalibration> {
    if same.is_empty() || different.is_empty() {
        return None;
    }
    const BINS: usize = 2000;
    let bin = |x: f32| (((x + 1.0) / 2.0 * BINS as f32) as usize).min(BINS - 1);
    let centre = |k: usize| -1.0 + (k as f64 + 0.5) * 2.0 / BINS as f64;
    let (mut ws, mut wd) = (vec![0f64; BINS], vec![0f64; BINS]);
    same.iter()
        .for_each(|&x| ws[bin(x)] += 0.5 / same.len() as f64);
    different
        .iter()
        .for_each(|&x| wd[bin(x)] += 0.5 / different.len() as f64);
    let mean: f64 = (0..BINS).map(|k| (ws[k] + wd[k]) * centre(k)).sum();
    let var: f64 = (0..BINS)
        .map(|k| (ws[k] + wd[k]) * (centre(k) - mean).powi(2))
        .sum();
    let sd = var.sqrt().max(1e-6);
    let z = |k: usize| (centre(k) - mean) / sd;
    let loss = |a: f64, b: f64| -> f64 {
        (0..BINS)
            .map(|k| {
                let t = a * z(k) + b;
                // −log σ(t) = softplus(−t), −log(1 − σ(t)) = softplus(t), computed stably.
                let softplus = |u: f64| u.max(0.0) + (-u.abs()).exp().ln_1p();
                ws[k] * softplus(-t) + wd[k] * softplus(t)
            })
            .sum()
    };
    let (mut a, mut b) = (0f64, 0f64);
    let mut current = loss(a, b);
    for _ in 0..100 {
        let (mut g, mut h) = ([0f64; 2], [0f64; 3]);
        for k in 0..BINS {
            let (w, x) = (ws[k] + wd[k], z(k));
            if w == 0.0 {
                continue;
            }
            let p = 1.0 / (1.0 + (-(a * x + b)).exp());
            let r = ws[k] * (p - 1.0) + wd[k] * p;
            let v = w * p * (1.0 - p);
            g[0] += r * x;
            g[1] += r;
            h[0] += v * x * x;
            h[1] += v * x;
            h[2] += v;
        }
        let det = h[0] * h[2] - h[1] * h[1];
        if det.abs() < 1e-300 {
            break;
        }
        let (da, db) = (
            (h[2] * g[0] - h[1] * g[1]) / det,
            (h[0] * g[1] - h[1] * g[0]) / det,
        );
        let mut step = 1.0;
        let mut improved = false;
        while step > 1e-6 {
            let candidate = loss(a - step * da, b - step * db);
            if candidate <= current {
                (a, b, current) = (a - step * da, b - step * db, candidate);
                improved = true;
                break;
            }
            step /= 2.0;
        }
        if !improved || (step * (da.abs() + db.abs())) < 1e-10 {
            break;
        }
    }
    // Back from the standardised cosine: a·(x − mean)/sd + b.
    let (a, b) = (a / sd, b - a * mean / sd);
    (a.is_finite() && b.is_finite()).then_some(ScoreCalibration { a, b })
}

/// Histogram of `values` in `bins` equal bins over [lo, hi], as fractions of all values.
pub fn histogram(values: &[f32], lo: f32, hi: f32, bins: usize) -> Vec<f64> {
    let mut counts = vec![0f64; bins];
    for &v in values {
        let k = (((v - lo) / (hi - lo)) * bins as f32)
            .floor()
            .clamp(0.0, bins as f32 - 1.0) as usize;
        counts[k] += 1.0;
    }
    let n = values.len().max(1) as f64;
    counts.iter_mut().for_each(|c| *c /= n);
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(deg: f32) -> Vec<f32> {
        let r = deg.to_radians();
        vec![r.cos(), r.sin()]
    }

    /// Three characters on the circle: 0 and 1 seen (train + val images), 2 unseen.
    fn fixture() -> ProtocolSet {
        let rows = [
            (0.0, 0, true),
            (10.0, 0, true),
            (5.0, 0, false),
            (90.0, 1, true),
            (100.0, 1, true),
            (60.0, 1, false), // a seen val image nearer... 60° is 55° from c0 and 35° from c1
            (200.0, 2, true),
            (210.0, 2, true),
            (20.0, 2, false), // unseen, drawn near character 0
        ];
        ProtocolSet {
            embeddings: rows.iter().map(|r| unit(r.0)).collect(),
            character: rows.iter().map(|r| r.1).collect(),
            train_split: rows.iter().map(|r| r.2).collect(),
            unseen: vec![false, false, true],
        }
    }

    #[test]
    fn one_shot_enrolment_equals_a_hand_count() {
        // 1-shot, many episodes: unseen character 2 has images at 200°, 210°, 20°. Enrolled with
        // 200° or 210°, the other of those two is right and 20° goes to character 0 (nearer
        // than 200/210°, whichever seen shot is drawn): 1 of 2 right. Enrolled with 20°, the
        // queries 200° and 210° are nearest to... c0's shot (0° or 10°) is 170°+ away, c1's
        // (90° or 100°) 100°+ away, 20° is 180°+ away: both wrong. Expected top-1: 2/3 · 1/2 = 1/3.
        let r = few_shot(&fixture(), 1, 3000, 1);
        assert!((r.unseen_top1 - 1.0 / 3.0).abs() < 0.03, "{r:?}");
        assert_eq!(r.unseen_queries, 2);
        // Seen val images: 5° is always nearest c0's shot (0° or 10°). 60° is nearest c1's shot
        // (30° or 40° away) except for a tie at 40° with c2's shot at 20° (1 draw in 6), so
        // seen top-1 is at least (1 + 5/6) / 2.
        assert!(r.seen_top1 > 0.9, "{r:?}");
    }

    #[test]
    fn open_set_scores_and_auroc_match_a_hand_computation() {
        let s = open_set_scores(&fixture(), &[unit(180.0)]);
        // Known queries: 5° (c0's centroid is at 5°: cos 0°, right) and 60° (c0 centroid 5°,
        // c1 95°: 55° vs 35° → c1, cos 35°, right).
        let cos = |d: f32| d.to_radians().cos();
        assert_eq!(s.known.len(), 2);
        assert!((s.known[0].0 - 1.0).abs() < 1e-5 && s.known[0].1);
        assert!((s.known[1].0 - cos(35.0)).abs() < 1e-5 && s.known[1].1);
        // Unknown: 200° (nearest c1 at 95°: 105°), 210° (115°), 20° (c0: 15°), extra 180° (85°).
        let mut u = s.unknown.clone();
        u.sort_by(f32::total_cmp);
        let mut expected = vec![cos(105.0), cos(115.0), cos(15.0), cos(85.0)];
        expected.sort_by(f32::total_cmp);
        for (a, b) in u.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-5);
        }
        // Known scores 1, cos 35°; unknown cos 15° beats cos 35°: 7 of 8 pairs ordered.
        let r = open_set_report(&s);
        assert!((r.auroc - 7.0 / 8.0).abs() < 1e-9, "{r:?}");
        // 5% of 2 known rounds down to index 0: t = cos 35°; unknowns below it: 3 of 4.
        assert!((r.unknown_rejected_at_5pct - 0.75).abs() < 1e-9);
        assert_eq!(r.known_correct_at_5pct, 1.0);
    }

    #[test]
    fn auroc_counts_ties_half() {
        assert_eq!(auroc(&[1.0, 2.0], &[0.0]), 1.0);
        assert_eq!(auroc(&[1.0], &[1.0]), 0.5);
        assert_eq!(auroc(&[0.0], &[1.0, 2.0]), 0.0);
    }

    #[test]
    fn calibration_is_monotone_and_crosses_one_half_between_the_classes() {
        let same: Vec<f32> = (0..200).map(|i| 0.7 + 0.2 * (i as f32 / 200.0)).collect();
        let different: Vec<f32> = (0..2000).map(|i| 0.3 + 0.5 * (i as f32 / 2000.0)).collect();
        let c = fit_calibration(&same, &different).unwrap();
        assert!(c.a > 0.0);
        assert!(c.confidence(0.95) > 0.9 && c.confidence(0.4) < 0.1);
        let crossing = -c.b / c.a;
        assert!((0.7..0.85).contains(&crossing), "{c:?}");
        // Indistinguishable distributions give a flat map near one half, not a diverging fit.
        let flat = fit_calibration(&different, &different).unwrap();
        assert!(
            flat.a.abs() < 1.0 && (flat.confidence(0.5) - 0.5).abs() < 0.05,
            "{flat:?}"
        );
        let p = pair_cosines(&[unit(0.0), unit(0.0), unit(90.0)], &[0, 0, 1]);
        let (s, d) = (&p.same, &p.different);
        assert_eq!((s.len(), d.len()), (1, 2));
        assert!((s[0] - 1.0).abs() < 1e-6 && d.iter().all(|x| x.abs() < 1e-6));
        assert!(
            (p.best_other_picture[0] - 1.0).abs() < 1e-6 && p.best_other_picture[2].abs() < 1e-6
        );
        assert!(p.best_other_label.iter().all(|x| x.abs() < 1e-6));
    }

    #[test]
    fn histograms_are_fractions() {
        let h = histogram(&[0.0, 0.5, 0.99, 1.0], 0.0, 1.0, 2);
        assert_eq!(h, vec![0.25, 0.75]);
    }
}
