//! The storage seam: what a catalogue must store and search, as a trait, so that the catalogue's
//! logic ([`crate::CatalogLogic`]: characters and the open set, recommendations, feeds) is written
//! once and runs on the embedded sled + hnsw_rs [`Catalog`] or on a distributed vector engine
//! (the Milvus backend). Object safe: the service and the CLI hold `Arc<dyn Storage>`.
//!
//! A storage keeps items (record, normalised vector, thumbnail), answers filtered nearest-neighbour
//! queries with exact cosines, keeps per-character centroids up to date as items come and go,
//! stores few-shot enrolments, the open-set threshold, and users' events. Everything that can be
//! computed from those (a feed, a recommendation, a verdict) belongs to the logic, not here.
//! It also keeps each item's copy descriptors (several views per picture) searchable for
//! copyright review and video scene search. Capabilities only the embedded catalogue has today
//! (in-place re-embedding, int8 graphs) are reached through [`Storage::embedded`].

use crate::catalog::{Catalog, CatalogCounts, CatalogStats, CompactReport};
use crate::copy_index::CopyMatch;
use crate::error::Result;
use crate::filter::Filter;
use crate::record::{
    AddOutcome, CopyVerdict, Event, Hit, Item, ItemId, ItemUpdate, ModelTag, NewItem, RestoredItem,
};
use crate::vector;
use crate::vector::VectorSum;
use std::collections::HashSet;

/// Items, vectors, filtered search, characters' centroids, enrolments, users' events.
pub trait Storage: Send + Sync {
    /// The model whose embeddings the storage holds.
    fn model(&self) -> &ModelTag;
    /// The search breadth (HNSW `ef`) used when a caller does not choose one.
    fn ef_search(&self) -> usize;
    /// Which engine this is, for messages and `/stats` (`"embedded"`, `"milvus"`).
    fn backend_name(&self) -> &'static str;
    /// Where the model was loaded from, when a tool recorded it; lets the CLI default to the
    /// catalogue's own model.
    fn model_source(&self) -> Result<Option<String>>;
    /// Records where the catalogue's model was loaded from (a checkpoint path).
    fn set_model_source(&self, source: &str) -> Result<()>;
    /// Whether the storage can serve requests now: `BackendUnavailable` when a remote engine
    /// does not answer or lost the collection (the service's readiness probe). The embedded
    /// catalogue is always ready.
    fn check_ready(&self) -> Result<()> {
        Ok(())
    }

    /// Adds items (exact duplicates by content hash are reported, not re-added), durably.
    fn add_batch(&self, items: Vec<NewItem>) -> Result<Vec<AddOutcome>>;
    /// Adds items copied from another catalogue with their ids and times kept (the copy of a
    /// migration): one already there with that id and hash is reported a duplicate, so a copy can
    /// resume; a different item holding the id is refused.
    fn add_restored(&self, items: Vec<RestoredItem>) -> Result<Vec<AddOutcome>>;
    /// Removes a live item from every search.
    fn remove(&self, id: ItemId) -> Result<()>;
    /// Changes an item's labels and/or tags; returns the new record.
    fn update(&self, id: ItemId, update: &ItemUpdate) -> Result<Item>;
    /// A live item's record.
    fn get(&self, id: ItemId) -> Result<Option<Item>>;
    /// A live item's (normalised) vector.
    fn vector(&self, id: ItemId) -> Result<Option<Vec<f32>>>;
    /// The vectors of live items `ids`, in their order (`None` for an id not live). One call
    /// for many items: a remote backend fetches them in one round trip, not one per item.
    fn vectors(&self, ids: &[ItemId]) -> Result<Vec<Option<Vec<f32>>>> {
        ids.iter().map(|&id| self.vector(id)).collect()
    }
    /// A live item's thumbnail.
    fn thumbnail(&self, id: ItemId) -> Result<Option<Vec<u8>>>;
    /// The live item with this content hash.
    fn find_by_hash(&self, hash: &str) -> Result<Option<ItemId>>;

    /// `(id, cosine)` of the `k` live items nearest to normalised `q` among those matching `filter`
    /// and not in `exclude`, best first, scores exact.
    fn nearest(
        &self,
        q: &[f32],
        k: usize,
        filter: &Filter,
        exclude: &HashSet<ItemId>,
        ef: usize,
    ) -> Result<Vec<(ItemId, f32)>>;
    /// Live ids matching `filter` and not in `exclude`, ascending.
    fn matching_ids(&self, filter: &Filter, exclude: &HashSet<ItemId>) -> Result<Vec<ItemId>>;
    /// Attaches records to scored ids, skipping any removed meanwhile.
    fn hits(&self, scored: Vec<(ItemId, f32)>) -> Result<Vec<Hit>> {
        let mut out = Vec::with_capacity(scored.len());
        for (id, score) in scored {
            if let Some(item) = self.get(id)? {
                out.push(Hit { id, score, item });
            }
        }
        Ok(out)
    }
    /// Every live id, ascending.
    fn live_ids(&self) -> Result<Vec<ItemId>>;
    /// Counts kept in memory (cheap enough for health checks).
    fn counts(&self) -> CatalogCounts;
    /// Counts and sizes (may walk the store).
    fn stats(&self) -> Result<CatalogStats>;

    /// Every character (live items labelled at the primary level, plus enrolled shots) with its
    /// normalised centroid, by name.
    fn character_centroids(&self) -> Result<Vec<(String, Vec<f32>)>>;
    /// Adds the sum of normalised enrolment shots to character `name`; returns the shots now
    /// stored for it.
    fn store_enrolment(&self, name: &str, shots: &VectorSum) -> Result<usize>;
    /// Every enrolled character with the sum of its shots.
    fn enrolments(&self) -> Result<Vec<(String, VectorSum)>>;
    /// The calibrated open-set threshold, if one was stored.
    fn stored_threshold(&self) -> Result<Option<f32>>;
    /// Stores the open-set threshold.
    fn store_threshold(&self, threshold: f32) -> Result<()>;

    /// Appends a user's event (durable when this returns).
    fn store_event(&self, user: &str, event: &Event) -> Result<()>;
    /// A user's events in time order.
    fn user_events(&self, user: &str) -> Result<Vec<Event>>;
    /// Every user with events, by name.
    fn users(&self) -> Result<Vec<String>>;
    /// Distinct users who liked each item.
    fn popularity(&self) -> Result<Vec<(ItemId, u64)>>;

    /// Length of the copy descriptors stored (`None`: no item has any yet).
    fn copy_dim(&self) -> Result<Option<usize>>;
    /// The copy descriptors of each of `ids`' views (empty for an item without any).
    fn copies(&self, ids: &[ItemId]) -> Result<Vec<Vec<Vec<f32>>>>;
    /// The `k` live items whose copy-descriptor views are most similar to any of the query
    /// `views`, best first, with their records (copyright review).
    fn search_copies(&self, views: &[Vec<f32>], k: usize) -> Result<Vec<(CopyMatch, Item)>>;
    /// The calibrated copy verdict, if one was stored.
    fn copy_verdict(&self) -> Result<Option<CopyVerdict>>;
    /// Stores the calibrated copy verdict.
    fn set_copy_verdict(&self, verdict: &CopyVerdict) -> Result<()>;

    /// Deletes removed items' records for good (and, on a vector engine, any of their rows a
    /// failed delete left behind).
    fn compact(&self) -> Result<CompactReport>;

    /// Makes the writes so far searchable at full speed, after a bulk load (the Milvus backend
    /// seals its growing segment so that the server indexes it; the embedded graph is always
    /// current, so this does nothing there).
    fn settle(&self) -> Result<()> {
        Ok(())
    }

    /// The embedded catalogue, for what only it can do yet (re-embedding, compaction).
    fn embedded(&self) -> Option<&Catalog> {
        None
    }

    /// Validates and normalises a caller's vector against the model's dimension.
    fn check_vector(&self, v: &[f32]) -> Result<Vec<f32>> {
        vector::normalised(v, self.model().dim)
    }
}

impl Storage for Catalog {
    fn model(&self) -> &ModelTag {
        Catalog::model(self)
    }
    fn ef_search(&self) -> usize {
        self.options.hnsw.ef_search
    }
    fn backend_name(&self) -> &'static str {
        "embedded"
    }
    fn model_source(&self) -> Result<Option<String>> {
        Catalog::model_source(self)
    }
    fn copy_dim(&self) -> Result<Option<usize>> {
        Catalog::copy_dim(self)
    }
    fn compact(&self) -> Result<CompactReport> {
        Catalog::compact(self)
    }
    fn copies(&self, ids: &[ItemId]) -> Result<Vec<Vec<Vec<f32>>>> {
        ids.iter().map(|&id| Catalog::copies(self, id)).collect()
    }
    fn search_copies(&self, views: &[Vec<f32>], k: usize) -> Result<Vec<(CopyMatch, Item)>> {
        Catalog::search_copies(self, views, k)
    }
    fn copy_verdict(&self) -> Result<Option<CopyVerdict>> {
        Catalog::copy_verdict(self)
    }
    fn set_copy_verdict(&self, verdict: &CopyVerdict) -> Result<()> {
        Catalog::set_copy_verdict(self, verdict)
    }
    fn set_model_source(&self, source: &str) -> Result<()> {
        Catalog::set_model_source(self, source)
    }
    fn add_batch(&self, items: Vec<NewItem>) -> Result<Vec<AddOutcome>> {
        Catalog::add_batch(self, items)
    }
    fn add_restored(&self, items: Vec<RestoredItem>) -> Result<Vec<AddOutcome>> {
        Catalog::add_restored(self, items)
    }
    fn remove(&self, id: ItemId) -> Result<()> {
        Catalog::remove(self, id)
    }
    fn update(&self, id: ItemId, update: &ItemUpdate) -> Result<Item> {
        Catalog::update(self, id, update)
    }
    fn get(&self, id: ItemId) -> Result<Option<Item>> {
        Catalog::get(self, id)
    }
    fn vector(&self, id: ItemId) -> Result<Option<Vec<f32>>> {
        Catalog::vector(self, id)
    }
    fn thumbnail(&self, id: ItemId) -> Result<Option<Vec<u8>>> {
        Catalog::thumbnail(self, id)
    }
    fn find_by_hash(&self, hash: &str) -> Result<Option<ItemId>> {
        Catalog::find_by_hash(self, hash)
    }
    fn nearest(
        &self,
        q: &[f32],
        k: usize,
        filter: &Filter,
        exclude: &HashSet<ItemId>,
        ef: usize,
    ) -> Result<Vec<(ItemId, f32)>> {
        self.scored(q, k, filter, exclude, ef)
    }
    fn matching_ids(&self, filter: &Filter, exclude: &HashSet<ItemId>) -> Result<Vec<ItemId>> {
        Ok(self.candidate_ids(filter, exclude))
    }
    fn hits(&self, scored: Vec<(ItemId, f32)>) -> Result<Vec<Hit>> {
        Catalog::hits(self, scored)
    }
    fn live_ids(&self) -> Result<Vec<ItemId>> {
        Ok(Catalog::live_ids(self))
    }
    fn counts(&self) -> CatalogCounts {
        Catalog::counts(self)
    }
    fn stats(&self) -> Result<CatalogStats> {
        Catalog::stats(self)
    }
    fn character_centroids(&self) -> Result<Vec<(String, Vec<f32>)>> {
        Catalog::character_centroids(self)
    }
    fn store_enrolment(&self, name: &str, shots: &VectorSum) -> Result<usize> {
        Catalog::store_enrolment(self, name, shots)
    }
    fn enrolments(&self) -> Result<Vec<(String, VectorSum)>> {
        self.store()?.enrolled()
    }
    fn stored_threshold(&self) -> Result<Option<f32>> {
        self.store()?.threshold()
    }
    fn store_threshold(&self, threshold: f32) -> Result<()> {
        let _writer = self.begin_write()?;
        self.store()?.set_threshold(threshold)
    }
    fn store_event(&self, user: &str, event: &Event) -> Result<()> {
        let _writer = self.begin_write()?;
        self.store()?.record_event(user, event)
    }
    fn user_events(&self, user: &str) -> Result<Vec<Event>> {
        self.store()?.events(user)
    }
    fn users(&self) -> Result<Vec<String>> {
        self.store()?.users()
    }
    fn popularity(&self) -> Result<Vec<(ItemId, u64)>> {
        self.store()?.popularity()
    }
    fn embedded(&self) -> Option<&Catalog> {
        Some(self)
    }
}
