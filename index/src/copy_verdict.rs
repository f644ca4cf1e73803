//! Turning copy scores into a verdict. A raw descriptor similarity means different things for
//! different pictures (a flat sketch is close to many pictures, a busy one to few), so the score is
//! normalised against the query's background: the similarity of its best match minus that of its
//! k-th best *other* catalogued picture (SSCD's normalisation, with the catalogue as background).
//! One threshold, chosen for a target precision on labelled scores, then says "copy" or not.

use crate::copy_index::CopyMatch;
use crate::error::{CatalogError, Result};
use crate::record::{CopyVerdict, Item, ItemId};
use crate::storage::Storage;
use serde::Serialize;

/// Which neighbour's similarity is the background (`k`-th best other picture).
pub const BACKGROUND_RANK: usize = 10;
/// The precision a default calibration aims for.
pub const DEFAULT_PRECISION: f32 = 0.99;

/// The threshold used until a catalogue is calibrated (`animelens index calibrate-copies`): the
/// precision-0.99 threshold `animelens bench copies` measured on holoen (BENCHMARKS.md).
pub const UNCALIBRATED_THRESHOLD: f32 = 0.1;

/// What the catalogue says about one upload.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyReview {
    /// Whether the score reaches the threshold.
    pub is_copy: bool,
    /// The best match's normalised score (see [`normalised_score`]); 0 without any match.
    pub score: f32,
    /// The threshold applied.
    pub threshold: f32,
    /// Whether the threshold was calibrated on this catalogue.
    pub calibrated: bool,
    /// The best matches, best first, one per item.
    pub matches: Vec<(CopyMatch, Item)>,
}

/// Reviews one upload by the copy descriptors of its views: its best matches, the best one's
/// normalised score and the verdict at the catalogue's calibrated threshold (or
/// [`UNCALIBRATED_THRESHOLD`]). `show` bounds the matches returned.
pub(crate) fn review_copy<S: Storage + ?Sized>(
    catalog: &S,
    views: &[Vec<f32>],
    show: usize,
) -> Result<CopyReview> {
    let found = catalog.search_copies(views, BACKGROUND_RANK + 1)?;
    let score = score_of(&found);
    let stored = catalog.copy_verdict()?;
    let threshold = stored.map_or(UNCALIBRATED_THRESHOLD, |v| v.threshold);
    let mut matches = found;
    matches.truncate(show.max(1));
    Ok(CopyReview {
        is_copy: !matches.is_empty() && score >= threshold,
        score,
        threshold,
        calibrated: stored.is_some(),
        matches,
    })
}

/// The views' descriptors of one catalogued picture's calibration uploads: its edited copies,
/// then the picture itself (see `animelens_models::copies::edits::calibration_uploads`).
pub type CalibrationViews = Vec<Vec<Vec<f32>>>;

/// Calibrates the copy verdict on `items` (a sample of live items): `describe` gives, per item,
/// the query views' descriptors of its edited copies followed by the item itself (`None`
/// when its picture is not available). Each copy's review counts as right when it names the
/// item; the item itself is reviewed with itself left out, as a non-copy, weighted like all
/// its copies together, so copies and non-copies count equally. Stores and returns the lowest
/// threshold reaching `precision`.
pub(crate) fn calibrate_copies<S: Storage + ?Sized>(
    catalog: &S,
    items: &[Item],
    precision: f32,
    describe: &mut dyn FnMut(&Item) -> Option<CalibrationViews>,
) -> Result<CopyVerdict> {
    let (mut correct, mut wrong, mut missed) = (Vec::new(), Vec::new(), 0usize);
    for item in items {
        let Some(mut uploads) = describe(item) else {
            continue;
        };
        let Some(itself) = uploads.pop() else {
            continue;
        };
        for views in &uploads {
            let found = catalog.search_copies(views, BACKGROUND_RANK + 1)?;
            let score = score_of(&found);
            match found.first() {
                Some((m, _)) if m.id == item.id => correct.push(score),
                _ => {
                    missed += 1;
                    wrong.push(score);
                }
            }
        }
        let others: Vec<(CopyMatch, Item)> = catalog
            .search_copies(&itself, BACKGROUND_RANK + 2)?
            .into_iter()
            .filter(|(m, _)| m.id != item.id)
            .collect();
        if !others.is_empty() {
            wrong.extend(std::iter::repeat_n(score_of(&others), uploads.len()));
        }
    }
    let verdict =
        threshold_for_precision(&correct, &wrong, missed, precision).ok_or_else(|| {
            CatalogError::invalid(
                format!(
                    "no copy threshold reaches precision {precision} ({} copies found, {} wrong \
                     answers)",
                    correct.len(),
                    wrong.len()
                ),
                "lower the precision or calibrate on more pictures",
            )
        })?;
    catalog.set_copy_verdict(&verdict)?;
    Ok(verdict)
}

/// The normalised score of a search's best match against the rest.
fn score_of(found: &[(CopyMatch, Item)]) -> f32 {
    let similarities: Vec<f32> = found.iter().map(|(m, _)| m.similarity).collect();
    similarities
        .split_first()
        .map_or(0.0, |(best, others)| normalised_score(*best, others))
}

/// One catalogued picture an upload matched, as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MatchedItem {
    /// The item's id.
    pub id: ItemId,
    /// Where the item came from.
    pub source: String,
    /// Its character, if labelled.
    pub character: Option<String>,
    /// Copy-descriptor cosine of the best pair of views (1 for the same bytes).
    pub similarity: f32,
}

impl MatchedItem {
    fn of(item: &Item, similarity: f32) -> Self {
        Self {
            id: item.id,
            source: item.source.clone(),
            character: item.character().map(str::to_string),
            similarity,
        }
    }
}

/// The review of one upload, as `animelens audit` and `POST /api/v1/audit` report it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CopyFinding {
    /// The upload (file name or path).
    pub upload: String,
    /// `copy`, `not_a_copy` or `error`.
    pub verdict: &'static str,
    /// The best match's normalised score.
    pub score: f32,
    /// The threshold applied.
    pub threshold: f32,
    /// Whether that threshold was calibrated on the catalogue.
    pub calibrated: bool,
    /// The edits the best match suggests (`exact` for the same bytes); empty for non-copies.
    pub edit: Vec<String>,
    /// The best matches, best first.
    pub matches: Vec<MatchedItem>,
    /// Why the upload could not be reviewed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CopyFinding {
    /// The finding for an upload that could not be reviewed.
    pub fn failed(upload: String, error: String) -> Self {
        Self {
            upload,
            verdict: "error",
            score: 0.0,
            threshold: 0.0,
            calibrated: false,
            edit: Vec::new(),
            matches: Vec::new(),
            error: Some(error),
        }
    }
}

/// Reviews one upload: an exact copy by its content hash (the fast path), else by the copy
/// descriptors of its views ([`review_copy`]); `hint` names the edits a copy's best match
/// suggests.
pub(crate) fn audit_upload<S: Storage + ?Sized>(
    catalog: &S,
    upload: String,
    content_hash: &str,
    views: &[Vec<f32>],
    show: usize,
    hint: &dyn Fn(&CopyMatch) -> Vec<String>,
) -> Result<CopyFinding> {
    let stored = catalog.copy_verdict()?;
    if let Some(item) = catalog
        .find_by_hash(content_hash)?
        .and_then(|id| catalog.get(id).transpose())
    {
        return Ok(CopyFinding {
            upload,
            verdict: "copy",
            score: 1.0,
            threshold: stored.map_or(UNCALIBRATED_THRESHOLD, |v| v.threshold),
            calibrated: stored.is_some(),
            edit: vec!["exact".into()],
            matches: vec![MatchedItem::of(&item?, 1.0)],
            error: None,
        });
    }
    let review = review_copy(catalog, views, show)?;
    let edit = match review.matches.first() {
        Some((m, _)) if review.is_copy => hint(m),
        _ => Vec::new(),
    };
    Ok(CopyFinding {
        upload,
        verdict: if review.is_copy { "copy" } else { "not_a_copy" },
        score: review.score,
        threshold: review.threshold,
        calibrated: review.calibrated,
        edit,
        matches: review
            .matches
            .iter()
            .map(|(m, item)| MatchedItem::of(item, m.similarity))
            .collect(),
        error: None,
    })
}

/// The normalised score of a best match with similarity `best`, given the similarities of the
/// query's other candidates, best first (the `BACKGROUND_RANK`-th of them, or the last when
/// there are fewer, is subtracted; no other candidates leaves `best`).
pub fn normalised_score(best: f32, others: &[f32]) -> f32 {
    let background = others
        .get(BACKGROUND_RANK - 1)
        .or(others.last())
        .copied()
        .unwrap_or(0.0);
    best - background
}

/// The lowest threshold whose predictions (`score ≥ t`) reach `precision`, over `correct` (scores
/// of predictions that name the right original) and `wrong` (scores of the rest: queries that are
/// no copy, or copies matched to the wrong picture), with the recall it gives over
/// `correct.len() + missed` copies. `None` when no threshold reaches the precision.
pub fn threshold_for_precision(
    correct: &[f32],
    wrong: &[f32],
    missed: usize,
    precision: f32,
) -> Option<CopyVerdict> {
    let mut scored: Vec<(f32, bool)> = correct
        .iter()
        .map(|&s| (s, true))
        .chain(wrong.iter().map(|&s| (s, false)))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let positives = correct.len() + missed;
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut best = None;
    let mut i = 0;
    while i < scored.len() {
        // Every prediction with the same score is in or out together.
        let score = scored[i].0;
        while i < scored.len() && scored[i].0 == score {
            if scored[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        if tp as f32 / (tp + fp) as f32 >= precision {
            best = Some(CopyVerdict {
                threshold: score,
                precision,
                recall: tp as f32 / positives.max(1) as f32,
            });
        }
    }
    best
}

/// Micro average precision (the ISC 2021 measure) of one prediction per query: `(score,
/// correct)` pairs over `positives` copy queries.
pub fn micro_average_precision(predictions: &[(f32, bool)], positives: usize) -> f32 {
    let mut sorted = predictions.to_vec();
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut sum) = (0usize, 0f32);
    for (i, (_, correct)) in sorted.iter().enumerate() {
        if *correct {
            tp += 1;
            sum += tp as f32 / (i + 1) as f32;
        }
    }
    sum / positives.max(1) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_is_the_one_a_hand_computation_gives() {
        // Sorted: 0.9 c, 0.8 c, 0.7 w, 0.6 c, 0.5 c, 0.4 w. Precision at each cut: 1, 1, 2/3, 3/4,
        // 4/5, 4/6. At 0.99 the lowest cut is 0.8 (recall 2/5 with one copy missed); at 0.75 it
        // is 0.5 (recall 4/5).
        let correct = [0.9, 0.6, 0.8, 0.5];
        let wrong = [0.7, 0.4];
        let v = threshold_for_precision(&correct, &wrong, 1, 0.99).unwrap();
        assert_eq!(v.threshold, 0.8);
        assert!((v.recall - 0.4).abs() < 1e-6);
        let v = threshold_for_precision(&correct, &wrong, 1, 0.75).unwrap();
        assert_eq!(v.threshold, 0.5);
        assert!((v.recall - 0.8).abs() < 1e-6);
        assert!(v.is_copy(0.5) && !v.is_copy(0.49));
        assert!(threshold_for_precision(&[0.1], &[0.9], 0, 0.99).is_none());
    }

    #[test]
    fn normalisation_subtracts_the_background_neighbour() {
        let others: Vec<f32> = (0..12).map(|i| 0.5 - i as f32 * 0.01).collect();
        assert!((normalised_score(0.9, &others) - (0.9 - 0.41)).abs() < 1e-6);
        assert!((normalised_score(0.9, &[0.3, 0.2]) - 0.7).abs() < 1e-6);
        assert_eq!(normalised_score(0.9, &[]), 0.9);
    }

    #[test]
    fn micro_ap_of_a_perfect_and_a_half_ranking() {
        assert_eq!(
            micro_average_precision(&[(0.9, true), (0.1, false)], 1),
            1.0
        );
        // Correct at ranks 2 and 3: (1/2 + 2/3) / 2.
        let ap = micro_average_precision(&[(0.9, false), (0.8, true), (0.7, true)], 2);
        assert!((ap - (0.5 + 2.0 / 3.0) / 2.0).abs() < 1e-6);
    }
}
