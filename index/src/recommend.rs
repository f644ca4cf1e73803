//! Recommendations as vector arithmetic over the catalogue: Qdrant's two strategies over positive
//! and negative examples, and a near-duplicate check for copyright review of uploads.
//!
//! * `AverageVector`: query = avg(pos) + (avg(pos) − avg(neg)) (just avg(pos) without negatives),
//!   then an ordinary search.
//! * `BestScore`: each candidate gets max cosine to the positives if that beats its max cosine to
//!   the negatives, otherwise −(max negative cosine)². Candidates come from a graph search around
//!   every positive (exact over the filtered set when there are no positives, where the score is
//!   −max negative cosine).

use crate::error::{CatalogError, Result};
use crate::filter::Filter;
use crate::record::{Hit, ItemId};
use crate::storage::Storage;
use crate::vector::{self, dot};
use std::collections::{BTreeSet, HashSet};

/// How positive and negative examples are combined (as Qdrant defines them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecommendStrategy {
    /// Search with avg(pos) + (avg(pos) − avg(neg)).
    #[default]
    AverageVector,
    /// Score each candidate by its best positive, or penalise it by its best negative.
    BestScore,
}

/// A recommendation request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecommendQuery {
    /// Embeddings the user wants more of.
    pub positives: Vec<Vec<f32>>,
    /// Embeddings the user wants less of.
    pub negatives: Vec<Vec<f32>>,
    /// How to combine them.
    pub strategy: RecommendStrategy,
    /// Number of results.
    pub k: usize,
    /// Conditions on results.
    pub filter: Filter,
    /// Items never to return (e.g. the examples themselves).
    pub exclude: Vec<ItemId>,
}

/// Qdrant's best-score objective for one candidate.
pub fn best_score(candidate: &[f32], positives: &[Vec<f32>], negatives: &[Vec<f32>]) -> f32 {
    let max = |set: &[Vec<f32>]| {
        set.iter()
            .map(|e| dot(candidate, e))
            .fold(f32::NEG_INFINITY, f32::max)
    };
    let (pos, neg) = (max(positives), max(negatives));
    if positives.is_empty() {
        -neg
    } else if pos > neg {
        pos
    } else {
        -(neg * neg)
    }
}

/// Items recommended from positive and negative examples; `Hit::score` is the strategy's score.
pub(crate) fn recommend<S: Storage + ?Sized>(
    storage: &S,
    query: &RecommendQuery,
) -> Result<Vec<Hit>> {
    crate::limits::check_examples(
        query.positives.len() + query.negatives.len(),
        query.exclude.len(),
    )?;
    let norm = |vs: &[Vec<f32>]| {
        vs.iter()
            .map(|v| storage.check_vector(v))
            .collect::<Result<Vec<_>>>()
    };
    let (pos, neg) = (norm(&query.positives)?, norm(&query.negatives)?);
    let exclude: HashSet<ItemId> = query.exclude.iter().copied().collect();
    let ef = storage.ef_search();
    match query.strategy {
        RecommendStrategy::AverageVector => {
            let avg_pos = vector::mean(&pos).ok_or_else(|| {
                CatalogError::invalid(
                    "the average-vector strategy needs at least one positive example",
                    "add a positive example or use the best-score strategy",
                )
            })?;
            let target: Vec<f32> = match vector::mean(&neg) {
                Some(avg_neg) => avg_pos
                    .iter()
                    .zip(&avg_neg)
                    .map(|(p, n)| 2.0 * p - n)
                    .collect(),
                None => avg_pos,
            };
            let target = vector::normalise(&target).ok_or_else(|| {
                CatalogError::invalid(
                    "positive and negative examples cancel out",
                    "pass examples that differ, or fewer negatives",
                )
            })?;
            let scored = storage.nearest(&target, query.k, &query.filter, &exclude, ef)?;
            storage.hits(scored)
        }
        RecommendStrategy::BestScore => {
            if pos.is_empty() && neg.is_empty() {
                return Err(CatalogError::invalid(
                    "no examples given",
                    "pass at least one positive or negative example",
                ));
            }
            let candidates: Vec<ItemId> = if pos.is_empty() {
                storage.matching_ids(&query.filter, &exclude)?
            } else {
                let pool = (query.k * 4).max(50);
                let mut ids = BTreeSet::new();
                for p in &pos {
                    let found = storage.nearest(p, pool, &query.filter, &exclude, ef.max(pool))?;
                    ids.extend(found.into_iter().map(|(id, _)| id));
                }
                ids.into_iter().collect()
            };
            let mut scored: Vec<(ItemId, f32)> = candidates
                .iter()
                .zip(storage.vectors(&candidates)?)
                .filter_map(|(&id, v)| Some((id, best_score(&v?, &pos, &neg))))
                .collect();
            scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            scored.truncate(query.k);
            storage.hits(scored)
        }
    }
}

/// Live items whose cosine to `vector` is at least `threshold` (e.g. 0.95), best first.
pub(crate) fn near_duplicates<S: Storage + ?Sized>(
    storage: &S,
    vector: &[f32],
    threshold: f32,
) -> Result<Vec<Hit>> {
    if !(-1.0..=1.0).contains(&threshold) {
        return Err(CatalogError::invalid(
            format!("near-duplicate threshold {threshold} is not a cosine"),
            "pass a threshold between -1 and 1 (0.95 is a typical value)",
        ));
    }
    let q = storage.check_vector(vector)?;
    let live = storage.counts().live;
    let mut k = 16;
    loop {
        let scored = storage.nearest(
            &q,
            k,
            &Filter::any(),
            &HashSet::new(),
            storage.ef_search().max(k),
        )?;
        let exhausted = scored.len() < k || k >= live;
        let all_close = scored.last().is_some_and(|s| s.1 >= threshold);
        if exhausted || !all_close {
            let close = scored.into_iter().filter(|s| s.1 >= threshold).collect();
            return storage.hits(close);
        }
        k *= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::best_score;

    #[test]
    fn best_score_follows_qdrant() {
        let pos = vec![vec![1.0, 0.0]];
        let neg = vec![vec![0.0, 1.0]];
        assert_eq!(best_score(&[1.0, 0.0], &pos, &neg), 1.0);
        let near_neg = [0.6, 0.8];
        assert!((best_score(&near_neg, &pos, &neg) + 0.64).abs() < 1e-6);
        assert!((best_score(&near_neg, &[], &neg) + 0.8).abs() < 1e-6);
    }
}
