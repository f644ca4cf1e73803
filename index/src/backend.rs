//! The seam for the scale-out path: the catalogue operations the web service and CLI need, as a
//! trait, so that a distributed vector engine (Qdrant or Milvus cluster) can replace the embedded
//! sled + HNSW [`Catalog`] without touching callers.

use crate::catalog::{Catalog, CatalogStats};
use crate::error::Result;
use crate::filter::Filter;
use crate::recommend::RecommendQuery;
use crate::record::{AddOutcome, EventKind, Hit, Item, ItemId, ItemUpdate, NewItem};

/// Catalogue operations independent of how they are stored. Object safe: use `Arc<dyn CatalogBackend>`.
pub trait CatalogBackend: Send + Sync {
    /// Adds items (exact duplicates by content hash are reported, not re-added).
    fn add_batch(&self, items: Vec<NewItem>) -> Result<Vec<AddOutcome>>;
    /// Removes a live item.
    fn remove(&self, id: ItemId) -> Result<()>;
    /// Changes an item's labels and/or tags.
    fn update(&self, id: ItemId, update: &ItemUpdate) -> Result<Item>;
    /// A live item's record.
    fn get(&self, id: ItemId) -> Result<Option<Item>>;
    /// Nearest live items to an embedding.
    fn search(&self, vector: &[f32], k: usize, filter: &Filter) -> Result<Vec<Hit>>;
    /// Nearest live items to a stored item.
    fn search_by_id(&self, id: ItemId, k: usize, filter: &Filter) -> Result<Vec<Hit>>;
    /// Recommendations from positive and negative examples.
    fn recommend(&self, query: &RecommendQuery) -> Result<Vec<Hit>>;
    /// Stores a user event.
    fn record_event(
        &self,
        user: &str,
        item: ItemId,
        kind: EventKind,
        at_ms: Option<u64>,
    ) -> Result<()>;
    /// A user's diversified feed.
    fn feed(&self, user: &str, k: usize, lambda: f32) -> Result<Vec<Hit>>;
    /// Counts and sizes.
    fn stats(&self) -> Result<CatalogStats>;
}

impl CatalogBackend for Catalog {
    fn add_batch(&self, items: Vec<NewItem>) -> Result<Vec<AddOutcome>> {
        Catalog::add_batch(self, items)
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
    fn search(&self, vector: &[f32], k: usize, filter: &Filter) -> Result<Vec<Hit>> {
        Catalog::search(self, vector, k, filter)
    }
    fn search_by_id(&self, id: ItemId, k: usize, filter: &Filter) -> Result<Vec<Hit>> {
        Catalog::search_by_id(self, id, k, filter)
    }
    fn recommend(&self, query: &RecommendQuery) -> Result<Vec<Hit>> {
        Catalog::recommend(self, query)
    }
    fn record_event(
        &self,
        user: &str,
        item: ItemId,
        kind: EventKind,
        at_ms: Option<u64>,
    ) -> Result<()> {
        Catalog::record_event(self, user, item, kind, at_ms)
    }
    fn feed(&self, user: &str, k: usize, lambda: f32) -> Result<Vec<Hit>> {
        Catalog::feed(self, user, k, lambda)
    }
    fn stats(&self) -> Result<CatalogStats> {
        Catalog::stats(self)
    }
}
