//! The catalogue's logic on top of any [`Storage`]: search by vector or by stored item, characters
//! (similarity, few-shot enrolment, open-set classification and its calibration),
//! recommendations and user feeds, copy review and video scene search. Written once here (each
//! family in its own module: `characters`, `recommend`, `feed`, `copy_verdict`, `scenes`), so the embedded catalogue and the Milvus backend answer
//! alike; implemented for every storage, `dyn Storage` included.

use crate::characters::{self, Calibration, CharacterScore, Classification};
use crate::copy_index::CopyMatch;
use crate::copy_verdict::{self, CalibrationViews, CopyFinding, CopyReview};
use crate::error::{CatalogError, Result};
use crate::feed;
use crate::filter::Filter;
use crate::recommend::{self, RecommendQuery};
use crate::record::{AddOutcome, CopyVerdict, EventKind, Hit, Item, ItemId, NewItem};
use crate::scenes::{self, SceneHit};
use crate::storage::Storage;
use std::collections::HashSet;

/// What callers ask of a catalogue beyond storing and fetching items.
pub trait CatalogLogic: Storage {
    /// The `k` video scenes whose frames best match a screenshot's copy-descriptor `views`, among
    /// the frames `keep` accepts (see `scenes`).
    fn search_scenes(
        &self,
        views: &[Vec<f32>],
        k: usize,
        keep: impl Fn(&Item) -> bool,
    ) -> Result<Vec<SceneHit>> {
        scenes::search_scenes(self, views, k, &keep)
    }

    /// Reviews one upload by its views' copy descriptors (see `copy_verdict`).
    fn review_copy(&self, views: &[Vec<f32>], show: usize) -> Result<CopyReview> {
        copy_verdict::review_copy(self, views, show)
    }

    /// Calibrates and stores the copy verdict's threshold for `precision` on edited copies of
    /// `items` (see `copy_verdict`).
    fn calibrate_copies(
        &self,
        items: &[Item],
        precision: f32,
        mut describe: impl FnMut(&Item) -> Option<CalibrationViews>,
    ) -> Result<CopyVerdict> {
        copy_verdict::calibrate_copies(self, items, precision, &mut describe)
    }

    /// Reviews one upload: exact copy by content hash, else by its views' copy descriptors;
    /// `hint` names the edits a copy's best match suggests.
    fn audit_upload(
        &self,
        upload: String,
        content_hash: &str,
        views: &[Vec<f32>],
        show: usize,
        hint: impl Fn(&CopyMatch) -> Vec<String>,
    ) -> Result<CopyFinding> {
        copy_verdict::audit_upload(self, upload, content_hash, views, show, &hint)
    }

    /// The `k` live items most similar to `vector` among those matching `filter`.
    fn search(&self, vector: &[f32], k: usize, filter: &Filter) -> Result<Vec<Hit>> {
        let q = self.check_vector(vector)?;
        let scored = self.nearest(&q, k, filter, &HashSet::new(), self.ef_search())?;
        self.hits(scored)
    }

    /// The `k` live items most similar to live item `id` (excluding itself).
    fn search_by_id(&self, id: ItemId, k: usize, filter: &Filter) -> Result<Vec<Hit>> {
        let v = self.vector(id)?.ok_or(CatalogError::UnknownItem { id })?;
        let scored = self.nearest(&v, k, filter, &HashSet::from([id]), self.ef_search())?;
        self.hits(scored)
    }

    /// Items recommended from positive and negative examples (see `recommend`).
    fn recommend(&self, query: &RecommendQuery) -> Result<Vec<Hit>> {
        recommend::recommend(self, query)
    }

    /// Live items whose cosine to `vector` is at least `threshold` (e.g. 0.95), best first.
    fn near_duplicates(&self, vector: &[f32], threshold: f32) -> Result<Vec<Hit>> {
        recommend::near_duplicates(self, vector, threshold)
    }

    /// Stores a user event on a live item (durable when this returns). `at_ms` defaults to now.
    fn record_event(
        &self,
        user: &str,
        item: ItemId,
        kind: EventKind,
        at_ms: Option<u64>,
    ) -> Result<()> {
        feed::record_event(self, user, item, kind, at_ms)
    }

    /// Up to `k` unseen live items for `user`, diversified by MMR with trade-off `lambda`.
    fn feed(&self, user: &str, k: usize, lambda: f32) -> Result<Vec<Hit>> {
        feed::feed(self, user, k, lambda)
    }

    /// The `k` characters whose centroids are closest to `name`'s.
    fn similar_characters(&self, name: &str, k: usize) -> Result<Vec<CharacterScore>> {
        characters::similar_characters(self, name, k)
    }

    /// Few-shot enrolment: adds `vectors` to character `name`'s centroid, creating the character
    /// if new. Returns the number of shots stored.
    fn enroll(&self, name: &str, vectors: &[Vec<f32>]) -> Result<usize> {
        characters::enroll(self, name, vectors)
    }

    /// Few-shot enrolment with images: adds `items` labelled `character = name`.
    fn enroll_items(&self, name: &str, items: Vec<NewItem>) -> Result<Vec<AddOutcome>> {
        characters::enroll_items(self, name, items)
    }

    /// Whether the open-set threshold was calibrated.
    fn open_set_calibrated(&self) -> Result<bool> {
        Ok(self.stored_threshold()?.is_some())
    }

    /// The open-set threshold in use (calibrated, or the default).
    fn open_set_threshold(&self) -> Result<f32> {
        Ok(self
            .stored_threshold()?
            .unwrap_or(characters::DEFAULT_OPEN_SET_THRESHOLD))
    }

    /// The `k` characters nearest to `vector` by centroid, and the open-set verdict.
    fn classify_by_centroid(&self, vector: &[f32], k: usize) -> Result<Classification> {
        characters::classify_by_centroid(self, vector, k)
    }

    /// Chooses and stores the open-set threshold from validation samples (see `characters`).
    fn calibrate_open_set(&self, samples: &[(Vec<f32>, String)]) -> Result<Calibration> {
        characters::calibrate_open_set(self, samples)
    }
}

impl<S: Storage + ?Sized> CatalogLogic for S {}
