//! The character level: per-character centroids (mean of live item vectors labelled at the primary
//! level, plus few-shot enrolment vectors, renormalised), character similarity, few-shot enrolment,
//! and open-set classification by nearest centroid with a calibrated "unknown" threshold.
//!
//! Threshold calibration maximises open-set accuracy on validation samples: a sample counts as
//! right when its best centroid is its true character with cosine ≥ t, or when its true character
//! is not in the catalogue and the best cosine is < t. The threshold is placed half-way between the
//! two scores around the best cut (ties go to the higher threshold: fewer false accepts), and
//! stored by the storage. [`crate::CatalogLogic::calibrate_open_set`] needs no images of unseen characters: it also
//! scores every known sample against the *other* characters' centroids, as a stand-in for an
//! image of a character the catalogue does not hold (which must answer unknown).

use crate::centroids::CentroidTable;
use crate::error::{CatalogError, Result};
use crate::record::{AddOutcome, NewItem, PRIMARY_LEVEL};
use crate::storage::Storage;
use crate::vector;

/// Threshold used until [`crate::CatalogLogic::calibrate_open_set`] stores one.
pub const DEFAULT_OPEN_SET_THRESHOLD: f32 = 0.5;

/// A character and its similarity to something.
#[derive(Debug, Clone, PartialEq)]
pub struct CharacterScore {
    /// The character's name.
    pub name: String,
    /// Cosine between centroids (or between a vector and the centroid).
    pub score: f32,
}

/// Nearest-centroid classification of one embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    /// The best character, or `None` ("unknown") when its cosine is below the threshold.
    pub label: Option<String>,
    /// The threshold applied.
    pub threshold: f32,
    /// The `k` nearest characters, best first.
    pub candidates: Vec<CharacterScore>,
}

/// Result of [`crate::CatalogLogic::calibrate_open_set`].
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// The chosen (and stored) threshold.
    pub threshold: f32,
    /// Open-set accuracy on the samples at that threshold.
    pub accuracy: f32,
    /// Queries whose true character is in the catalogue.
    pub known: usize,
    /// Queries that should answer unknown (characters absent from the catalogue, or simulated).
    pub unknown: usize,
}

/// Picks the threshold maximising open-set accuracy; `samples` are (best cosine, correct, known).
fn best_threshold(samples: &mut [(f32, bool, bool)]) -> (f32, f32) {
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = samples.len();
    // At cut j every sample at index >= j is accepted: right if correct; below j right if unknown.
    let mut suffix_correct = vec![0usize; n + 1];
    for j in (0..n).rev() {
        suffix_correct[j] = suffix_correct[j + 1] + usize::from(samples[j].1);
    }
    let (mut best_j, mut best_right, mut unknown_below) = (0, suffix_correct[0], 0);
    for j in 1..=n {
        unknown_below += usize::from(!samples[j - 1].2);
        let tie = j < n && samples[j].0 == samples[j - 1].0;
        let right = suffix_correct[j] + unknown_below;
        if !tie && right >= best_right {
            (best_j, best_right) = (j, right);
        }
    }
    let threshold = match best_j {
        0 => samples[0].0 - 1e-4,
        j if j == n => samples[n - 1].0 + 1e-4,
        j => (samples[j - 1].0 + samples[j].0) / 2.0,
    };
    (threshold, best_right as f32 / n as f32)
}

/// The `k` characters whose centroids are closest to `name`'s.
pub(crate) fn similar_characters<S: Storage + ?Sized>(
    storage: &S,
    name: &str,
    k: usize,
) -> Result<Vec<CharacterScore>> {
    let centroids = storage.character_centroids()?;
    let own = centroids
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, c)| c.clone())
        .ok_or_else(|| CatalogError::UnknownCharacter { name: name.into() })?;
    Ok(rank(
        &own,
        centroids.into_iter().filter(|(n, _)| n != name),
        k,
    ))
}

/// Few-shot enrolment: adds `vectors` (e.g. embeddings of a handful of images) to character
/// `name`'s centroid, creating the character if new. Returns the number of shots stored.
pub(crate) fn enroll<S: Storage + ?Sized>(
    storage: &S,
    name: &str,
    vectors: &[Vec<f32>],
) -> Result<usize> {
    crate::limits::check_name("character name", name)?;
    if vectors.is_empty() {
        return Err(CatalogError::invalid(
            "enrolment needs a character name and at least one vector",
            "pass the name and the embeddings of a few images of the character",
        ));
    }
    let shots = vectors
        .iter()
        .map(|v| storage.check_vector(v))
        .collect::<Result<Vec<_>>>()?;
    storage.store_enrolment(name, &CentroidTable::sum_of(storage.model().dim, &shots))
}

/// Few-shot enrolment with images: adds `items` labelled `character = name` to the catalogue
/// (so they are searchable and shape the centroid).
pub(crate) fn enroll_items<S: Storage + ?Sized>(
    storage: &S,
    name: &str,
    items: Vec<NewItem>,
) -> Result<Vec<AddOutcome>> {
    let items = items
        .into_iter()
        .map(|mut i| {
            i.labels.insert(PRIMARY_LEVEL.to_string(), name.to_string());
            i
        })
        .collect();
    storage.add_batch(items)
}

/// The `k` characters nearest to `vector` by centroid, and the verdict: the best one, or
/// unknown when its cosine is below the open-set threshold.
pub(crate) fn classify_by_centroid<S: Storage + ?Sized>(
    storage: &S,
    vector: &[f32],
    k: usize,
) -> Result<Classification> {
    let q = storage.check_vector(vector)?;
    let threshold = storage
        .stored_threshold()?
        .unwrap_or(DEFAULT_OPEN_SET_THRESHOLD);
    let candidates = rank(&q, storage.character_centroids()?, k.max(1));
    let label = candidates
        .first()
        .filter(|c| c.score >= threshold)
        .map(|c| c.name.clone());
    Ok(Classification {
        label,
        threshold,
        candidates: candidates.into_iter().take(k).collect(),
    })
}

/// Chooses the open-set threshold on validation `samples` of (embedding, true character), with
/// simulated unseen characters, and stores it: each sample whose
/// character is in the catalogue counts twice, once as a known query (right when its nearest
/// centroid is its character with cosine ≥ t) and once, with its own character left out, as
/// an unknown query (right when the best other centroid has cosine < t); samples of
/// characters absent from the catalogue count once, as unknown queries. Stores the threshold.
pub(crate) fn calibrate_open_set<S: Storage + ?Sized>(
    storage: &S,
    samples: &[(Vec<f32>, String)],
) -> Result<Calibration> {
    let centroids = storage.character_centroids()?;
    if samples.is_empty() || centroids.len() < 2 {
        return Err(CatalogError::invalid(
            "open-set calibration needs validation samples and at least two characters in the catalogue",
            "add labelled items of several characters, then pass (embedding, true character) pairs",
        ));
    }
    let checked = samples
        .iter()
        .map(|(v, truth)| Ok((storage.check_vector(v)?, truth.clone())))
        .collect::<Result<Vec<_>>>()?;
    let calibration = open_set_threshold(&checked, &centroids);
    storage.store_threshold(calibration.threshold)?;
    Ok(calibration)
}

/// The calibration rule of [`crate::CatalogLogic::calibrate_open_set`] on normalised vectors, without a
/// catalogue (the model's evaluation applies the same rule): `samples` of (embedding, true
/// character) against `centroids` (at least two).
pub fn open_set_threshold(
    samples: &[(Vec<f32>, String)],
    centroids: &[(String, Vec<f32>)],
) -> Calibration {
    let mut scored = Vec::with_capacity(2 * samples.len());
    for (q, truth) in samples {
        let ranked = rank(q, centroids.iter().cloned(), 2);
        let known = centroids.iter().any(|(n, _)| n == truth);
        if known {
            scored.push((ranked[0].score, &ranked[0].name == truth, true));
        }
        if let Some(best_other) = ranked.iter().find(|c| &c.name != truth) {
            scored.push((best_other.score, false, false));
        }
    }
    let known = scored.iter().filter(|s| s.2).count();
    let unknown = scored.len() - known;
    let (threshold, accuracy) = best_threshold(&mut scored);
    Calibration {
        threshold,
        accuracy,
        known,
        unknown,
    }
}

/// Ranks `centroids` by cosine to normalised `q`, best first, keeping `k`.
fn rank(
    q: &[f32],
    centroids: impl IntoIterator<Item = (String, Vec<f32>)>,
    k: usize,
) -> Vec<CharacterScore> {
    let mut out: Vec<CharacterScore> = centroids
        .into_iter()
        .map(|(name, c)| CharacterScore {
            score: vector::dot(q, &c),
            name,
        })
        .collect();
    out.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.name.cmp(&b.name))
    });
    out.truncate(k);
    out
}

#[cfg(test)]
mod tests {
    use super::best_threshold;
    use crate::bench::clustered_vectors;
    use crate::{Catalog, CatalogLogic, ModelTag, NewItem, OpenOptions};

    #[test]
    fn open_set_calibration_separates_own_and_other_characters() {
        let dir = tempfile::tempdir().unwrap();
        let tag = ModelTag {
            fingerprint: "t".into(),
            dim: 32,
        };
        let cat = Catalog::open(dir.path().join("c"), OpenOptions::new(tag)).unwrap();
        let (vectors, clusters) = clustered_vectors(200, 32, 5, 0.3, 11);
        let names: Vec<String> = clusters.iter().map(|c| format!("c{c}")).collect();
        let items = vectors[..150]
            .iter()
            .zip(&names)
            .map(|(v, n)| NewItem {
                labels: [("character".to_string(), n.clone())].into(),
                vector: v.clone(),
                ..NewItem::default()
            })
            .collect();
        cat.add_batch(items).unwrap();
        let samples: Vec<(Vec<f32>, String)> = vectors[150..]
            .iter()
            .cloned()
            .zip(names[150..].iter().cloned())
            .collect();
        let cal = cat.calibrate_open_set(&samples).unwrap();
        assert_eq!((cal.known, cal.unknown), (50, 50));
        assert!(cal.accuracy > 0.95, "{cal:?}");
        assert_eq!(cat.open_set_threshold().unwrap(), cal.threshold);
        for (v, truth) in &samples {
            let c = cat.classify_by_centroid(v, 2).unwrap();
            assert_eq!(c.label.as_deref(), Some(truth.as_str()));
            assert!(c.candidates[1].score < cal.threshold);
        }
    }

    #[test]
    fn threshold_separates_known_from_unknown() {
        // (best cosine, correct, known)
        let mut s = vec![
            (0.9, true, true),
            (0.8, true, true),
            (0.7, true, true),
            (0.4, false, false),
            (0.3, false, false),
            (0.6, false, true),
        ];
        let (t, acc) = best_threshold(&mut s);
        assert!(t > 0.6 && t < 0.7, "threshold {t}");
        assert!((acc - 5.0 / 6.0).abs() < 1e-6);
        let mut all_known = vec![(0.2, true, true), (0.3, true, true)];
        let (t, acc) = best_threshold(&mut all_known);
        assert!(t < 0.2 && acc == 1.0);
    }
}
