//! The catalogue: sled store (source of truth) plus the derived HNSW graph, label postings and
//! centroid cache, kept in step by a single writer. Readers share an `RwLock` on the derived state;
//! a writer persists and flushes to sled first, inserts into the graph under the read lock (hnsw_rs
//! insertion is thread-safe; the new id is not yet visible because searches filter on the live set),
//! then publishes under a short write lock. Searches therefore see each write entirely or not at all.

use crate::ann::{Ann, GraphPrecision, HnswParams, MAX_CONNECTIONS};
use crate::centroids::CentroidTable;
use crate::copy_index::{check_query_views, checked_copies, CopyIndex, CopyMatch};
use crate::dump::{self, DumpTag};
use crate::error::{CatalogError, Result};
use crate::filter::{Filter, Postings};
use crate::limits;
use crate::record::{
    now_ms, AddOutcome, CopyVerdict, Hit, Item, ItemId, ItemUpdate, ModelTag, NewItem, RestoredItem,
};
use crate::store::{Prepared, Store};
use crate::vector::{self, QuantizedVector};
use rayon::prelude::*;
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Exact scoring of at least this many items is shared out among rayon's threads.
const PARALLEL_EXACT_MIN: usize = 256;

/// Filtered searches over at most this many items are exact by default.
pub const DEFAULT_EXACT_THRESHOLD: usize = 2000;

/// How to open a catalogue.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The model whose embeddings the caller will add and search with. `None` opens an existing
    /// catalogue with whatever model it was built with (maintenance commands).
    pub model: Option<ModelTag>,
    /// HNSW parameters.
    pub hnsw: HnswParams,
    /// Also store an int8 scalar-quantised copy of each vector.
    pub store_int8: bool,
    /// Show a progress bar while building the graph.
    pub show_progress: bool,
    /// Save the graph to disk when the catalogue is dropped, so that the next open reloads it.
    pub save_index_on_close: bool,
    /// Filtered searches whose filter matches at most this many items are answered exactly.
    pub exact_threshold: usize,
}

impl OpenOptions {
    /// Options for opening (or creating) a catalogue of `model`'s embeddings.
    pub fn new(model: ModelTag) -> Self {
        OpenOptions {
            model: Some(model),
            ..Self::existing()
        }
    }

    /// Options for opening an existing catalogue whatever its model.
    pub fn existing() -> Self {
        OpenOptions {
            model: None,
            hnsw: HnswParams::default(),
            store_int8: false,
            show_progress: false,
            save_index_on_close: true,
            exact_threshold: DEFAULT_EXACT_THRESHOLD,
        }
    }
}

/// The counts the catalogue keeps in memory: reading them touches neither sled nor the disk, so
/// health checks and metrics stay cheap and cannot block on the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogCounts {
    /// Live (searchable) items.
    pub live: usize,
    /// Removed items still in the search graph, awaiting compaction.
    pub tombstoned: usize,
    /// Write generation.
    pub generation: u64,
}

/// Catalogue counts and sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogStats {
    /// Item records in the store (live and tombstoned).
    pub items: usize,
    /// Live (searchable) items.
    pub live: usize,
    /// Tombstoned items awaiting compaction.
    pub tombstoned: usize,
    /// Embedding dimension.
    pub dim: usize,
    /// Model fingerprint.
    pub fingerprint: String,
    /// Bytes on disk (store and saved index).
    pub bytes_on_disk: u64,
    /// Write generation.
    pub generation: u64,
    /// Points in the HNSW graph (live and tombstoned until compaction).
    pub indexed_points: usize,
    /// What the graph stores of each vector.
    pub graph_precision: GraphPrecision,
}

impl std::fmt::Display for CatalogStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "items:          {}", self.items)?;
        writeln!(f, "live:           {}", self.live)?;
        writeln!(f, "tombstoned:     {}", self.tombstoned)?;
        writeln!(f, "indexed points: {}", self.indexed_points)?;
        writeln!(f, "graph vectors:  {}", self.graph_precision)?;
        writeln!(f, "dimension:      {}", self.dim)?;
        writeln!(f, "fingerprint:    {}", self.fingerprint)?;
        writeln!(f, "bytes on disk:  {}", self.bytes_on_disk)?;
        write!(f, "generation:     {}", self.generation)
    }
}

/// Agreement between the store and the derived index (see [`Catalog::check_consistency`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consistency {
    /// Live items according to sled.
    pub live_in_store: usize,
    /// Live items according to the index.
    pub live_in_index: usize,
    /// Live in sled but not searchable.
    pub missing_from_index: Vec<ItemId>,
    /// Searchable but not live in sled.
    pub stale_in_index: Vec<ItemId>,
}

impl Consistency {
    /// True when store and index agree exactly.
    pub fn is_consistent(&self) -> bool {
        self.missing_from_index.is_empty() && self.stale_in_index.is_empty()
    }
}

/// What [`Catalog::compact`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactReport {
    /// Tombstoned items whose records were deleted.
    pub purged: usize,
    /// Live items in the rebuilt graph.
    pub live: usize,
}

/// Where the current HNSW graph came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexOrigin {
    /// Reloaded from a dump matching the store.
    Reloaded,
    /// Built from the store (no usable dump, or after rebuild/compact).
    Built,
}

/// The derived, in-memory side of the catalogue.
pub(crate) struct IndexState {
    pub(crate) ann: Ann,
    pub(crate) live: HashSet<ItemId>,
    pub(crate) postings: Postings,
    pub(crate) generation: u64,
    pub(crate) origin: IndexOrigin,
    /// Per-character vector sums, computed on first use and then kept up to date by writers.
    pub(crate) centroids: Mutex<Option<CentroidTable>>,
}

/// Read access to the store of a [`Catalog`]; it holds the store's read lock, so a reopen waits
/// for it.
pub(crate) struct StoreGuard<'a>(RwLockReadGuard<'a, Option<Store>>);

impl std::ops::Deref for StoreGuard<'_> {
    type Target = Store;

    fn deref(&self) -> &Store {
        self.0
            .as_ref()
            .expect("Catalog::store checks that the store is open")
    }
}

/// Locks ignoring poisoning: a panicked reader must not take the whole service down.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An image catalogue: items, their embeddings, user events, enrolled characters. `Send + Sync`;
/// share it with `Arc<Catalog>`.
pub struct Catalog {
    pub(crate) dir: PathBuf,
    /// `None` only between dropping a failed store and a reopen that did not succeed.
    store: RwLock<Option<Store>>,
    pub(crate) model: ModelTag,
    pub(crate) options: OpenOptions,
    pub(crate) state: RwLock<IndexState>,
    pub(crate) writer: Mutex<()>,
    saved_generation: Mutex<Option<u64>>,
    /// The copy graph, built on the first copy search (see `copy_index`).
    copy_index: Mutex<Option<Arc<CopyIndex>>>,
}

impl Catalog {
    /// Opens the catalogue in folder `dir` (creating it when `options.model` is set), reloading the
    /// saved graph when it matches the store and rebuilding it otherwise.
    pub fn open(dir: impl AsRef<Path>, mut options: OpenOptions) -> Result<Catalog> {
        let dir = dir.as_ref().to_path_buf();
        let p = options.hnsw;
        if !(2..=MAX_CONNECTIONS).contains(&p.max_nb_connection)
            || p.ef_construction == 0
            || p.ef_search == 0
        {
            return Err(CatalogError::invalid(
                format!("HNSW parameters {p:?} are out of range"),
                format!("use 2 <= max_nb_connection <= {MAX_CONNECTIONS} and positive ef values"),
            ));
        }
        let (store, model) = Store::open_with_model(&dir, options.model.as_ref())?;
        if let Some(place) = store.vectors_in()? {
            return Err(CatalogError::invalid(
                format!(
                    "{} holds the records of a Milvus-backed catalogue (its vectors are in {place}), \
                     not an embedded catalogue",
                    dir.display()
                ),
                "serve it with backend = \"milvus\", or make a local copy with `animelens index export \
                 --from milvus://HOST:PORT/COLLECTION --records DIR --to NEW_DIR`",
            ));
        }
        let precision = options
            .hnsw
            .precision
            .or_else(|| dump::saved_precision(&dir))
            .unwrap_or_default();
        options.hnsw.precision = Some(precision);
        let generation = store.generation()?;
        let items = store.live_items()?;
        let tag = DumpTag {
            generation,
            fingerprint: model.fingerprint.clone(),
            dim: model.dim,
            precision,
        };
        let loaded = dump::load(&dir, &tag).filter(|ann| {
            let ids: HashSet<ItemId> = ann.ids().into_iter().collect();
            let complete = items.iter().all(|i| ids.contains(&i.id));
            if !complete {
                tracing::warn!("saved HNSW index lacks live items; rebuilding it");
            }
            complete
        });
        let saved = loaded.as_ref().map(|_| generation);
        let (ann, origin) = match loaded {
            Some(ann) => (ann, IndexOrigin::Reloaded),
            None => (
                build_ann(&store, &dir, &items, &options)?,
                IndexOrigin::Built,
            ),
        };
        let state = new_state(ann, items, generation, origin);
        Ok(Catalog {
            dir,
            store: RwLock::new(Some(store)),
            model,
            options,
            state: RwLock::new(state),
            writer: Mutex::new(()),
            saved_generation: Mutex::new(saved),
            copy_index: Mutex::new(None),
        })
    }

    /// Whether folder `dir` holds a catalogue (so that opening it will not create one).
    pub fn exists(dir: impl AsRef<Path>) -> bool {
        Store::path_in(dir.as_ref()).exists()
    }

    /// The catalogue folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the current graph was reloaded from a dump or built from the store.
    pub fn index_origin(&self) -> IndexOrigin {
        self.read_state().origin
    }

    /// The model the catalogue's embeddings come from.
    pub fn model(&self) -> &ModelTag {
        &self.model
    }

    /// Where the model was loaded from, when a caller recorded it (see
    /// [`Catalog::set_model_source`]); lets tools default to the catalogue's own model.
    pub fn model_source(&self) -> Result<Option<String>> {
        self.store()?.model_source()
    }

    /// Records where the catalogue's model was loaded from (a checkpoint path).
    pub fn set_model_source(&self, source: &str) -> Result<()> {
        let _writer = self.begin_write()?;
        self.store()?.set_model_source(source)
    }

    pub(crate) fn read_state(&self) -> RwLockReadGuard<'_, IndexState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write_state(&self) -> RwLockWriteGuard<'_, IndexState> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sled store, for one operation (do not hold the guard across a call that writes).
    pub(crate) fn store(&self) -> Result<StoreGuard<'_>> {
        let guard = self.store.read().unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() {
            return Err(CatalogError::StorageUnavailable {
                dir: self.dir.clone(),
            });
        }
        Ok(StoreGuard(guard))
    }

    /// Takes the single-writer lock. When an earlier write met an I/O error (sled then fails every
    /// later write until reopened, e.g. after a full disk), first reopens the store, and rebuilds
    /// the derived state if the reopened store's generation is not the one searches see (a failed
    /// write that reached the disk after all). Writes thus recover once space is freed, without a
    /// restart; until then each write answers the disk's error again.
    pub(crate) fn begin_write(&self) -> Result<MutexGuard<'_, ()>> {
        let writer = lock(&self.writer);
        let needs_reopen = self
            .store
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_none_or(Store::has_failed);
        if needs_reopen {
            self.reopen_store()?;
        }
        Ok(writer)
    }

    /// Drops the failed store (sled's file lock with it) and opens it again. Caller holds the
    /// writer lock.
    fn reopen_store(&self) -> Result<()> {
        let published = self.read_state().generation;
        let mut slot = self.store.write().unwrap_or_else(PoisonError::into_inner);
        *slot = None;
        let store = Store::open(&self.dir)?;
        let generation = store.generation()?;
        *slot = Some(store);
        drop(slot);
        tracing::warn!(
            catalogue = %self.dir.display(),
            "reopened the catalogue's store after a failed write"
        );
        if generation != published {
            tracing::warn!(
                "a failed write reached the disk; rebuilding the search index from the store"
            );
            self.rebuild_locked()?;
        }
        Ok(())
    }

    /// Validates and normalises a caller's vector.
    pub(crate) fn check_vector(&self, v: &[f32]) -> Result<Vec<f32>> {
        vector::normalised(v, self.model.dim)
    }

    /// Adds one item; an exact duplicate (same content hash as a live item) is not written and its
    /// existing id is returned with `duplicate: true`. Durable when this returns.
    pub fn add(&self, item: NewItem) -> Result<AddOutcome> {
        Ok(self.add_batch(vec![item])?[0])
    }

    /// Adds items in one transaction (one flush). Outcomes are in input order.
    pub fn add_batch(&self, items: Vec<NewItem>) -> Result<Vec<AddOutcome>> {
        let added_at_ms = now_ms();
        items.iter().try_for_each(limits::check_new_item)?;
        let prepared = items
            .into_iter()
            .map(|n| {
                Ok(Prepared {
                    copy_dim: n.copies.first().map_or(0, Vec::len),
                    copies: self.check_copies(&n.copies)?,
                    vector: self.check_vector(&n.vector)?,
                    store_int8: self.options.store_int8,
                    item: n.record(added_at_ms),
                    thumbnail: n.thumbnail,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.add_prepared(prepared)
    }

    /// Adds items copied from another catalogue, keeping their ids (see
    /// [`Storage::add_restored`](crate::Storage::add_restored)).
    pub fn add_restored(&self, items: Vec<RestoredItem>) -> Result<Vec<AddOutcome>> {
        let prepared = items
            .into_iter()
            .map(|r| {
                limits::check_restored(&r.item)?;
                Ok(Prepared {
                    copy_dim: r.copies.first().map_or(0, Vec::len),
                    copies: self.check_copies(&r.copies)?,
                    vector: self.check_vector(&r.vector)?,
                    store_int8: self.options.store_int8,
                    thumbnail: r.thumbnail,
                    item: r.item,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.add_prepared(prepared)
    }

    /// Writes prepared items in one transaction and publishes the new ones.
    fn add_prepared(&self, prepared: Vec<Prepared>) -> Result<Vec<AddOutcome>> {
        if prepared.is_empty() {
            return Ok(Vec::new());
        }
        let _writer = self.begin_write()?;
        let (written, generation) = self.store()?.add_items(&prepared)?;
        let mut outcomes = Vec::with_capacity(written.len());
        let mut to_index: Vec<(Vec<f32>, Item)> = Vec::new();
        let mut copies: Vec<(ItemId, Vec<f32>)> = Vec::new();
        let mut fresh: HashSet<ItemId> = HashSet::new();
        for ((id, duplicate), p) in written.iter().copied().zip(prepared) {
            if !duplicate {
                fresh.insert(id);
                let mut item = p.item;
                item.id = id;
                to_index.push((p.vector, item));
                copies.push((id, p.copies));
                outcomes.push(AddOutcome { id, duplicate });
            } else if fresh.contains(&id) || self.read_state().live.contains(&id) {
                outcomes.push(AddOutcome { id, duplicate });
            } else {
                // Stored by an earlier call whose index update did not happen (it failed after the
                // sled write): index it now and report it as new, since that call reported failure.
                let item = self
                    .store()?
                    .item(id)?
                    .ok_or(CatalogError::UnknownItem { id })?;
                let v = self.store()?.vector(id)?.ok_or_else(|| {
                    CatalogError::corrupt(&self.dir, format!("vectors/{id} missing"))
                })?;
                fresh.insert(id);
                to_index.push((v, item));
                copies.push((id, self.store()?.copies(id)?.unwrap_or_default()));
                outcomes.push(AddOutcome {
                    id,
                    duplicate: false,
                });
            }
        }
        self.index_copies(&copies);
        self.publish(to_index, generation);
        Ok(outcomes)
    }

    /// Inserts stored items into the graph, then makes them visible in one step.
    fn publish(&self, items: Vec<(Vec<f32>, Item)>, generation: u64) {
        {
            let st = self.read_state();
            if items.len() >= 64 {
                let points: Vec<(Vec<f32>, ItemId)> =
                    items.iter().map(|(v, i)| (v.clone(), i.id)).collect();
                st.ann.insert_many(&points);
            } else {
                items.iter().for_each(|(v, i)| st.ann.insert(v, i.id));
            }
        }
        let mut st = self.write_state();
        let st = &mut *st;
        for (v, item) in &items {
            st.live.insert(item.id);
            st.postings.insert(item);
            if let (Some(table), Some(c)) = (
                st.centroids
                    .get_mut()
                    .unwrap_or_else(PoisonError::into_inner),
                item.character(),
            ) {
                table.add(c, v);
            }
        }
        st.generation = generation;
    }

    /// Tombstones a live item: it disappears from every search at once; its records are deleted
    /// by [`Catalog::compact`].
    pub fn remove(&self, id: ItemId) -> Result<()> {
        let _writer = self.begin_write()?;
        let (item, generation) = self.store()?.tombstone(id)?;
        let v = match item.character() {
            Some(_) => self.store()?.vector(id)?,
            None => None,
        };
        let mut st = self.write_state();
        let st = &mut *st;
        if st.live.remove(&id) {
            st.postings.remove(&item);
            if let (Some(table), Some(c), Some(v)) = (
                st.centroids
                    .get_mut()
                    .unwrap_or_else(PoisonError::into_inner),
                item.character(),
                &v,
            ) {
                table.subtract(c, v);
            }
        }
        st.generation = generation;
        Ok(())
    }

    /// Replaces an item's labels and/or tags; returns the updated record.
    pub fn update(&self, id: ItemId, update: &ItemUpdate) -> Result<Item> {
        limits::check_update(update)?;
        let _writer = self.begin_write()?;
        let (old, new, generation) = self.store()?.update_item(id, update)?;
        let v = if old.character() != new.character() {
            self.store()?.vector(id)?
        } else {
            None
        };
        let mut st = self.write_state();
        let st = &mut *st;
        if st.live.contains(&id) {
            st.postings.remove(&old);
            st.postings.insert(&new);
            if let (Some(table), Some(v)) = (
                st.centroids
                    .get_mut()
                    .unwrap_or_else(PoisonError::into_inner),
                &v,
            ) {
                if let Some(c) = old.character() {
                    table.subtract(c, v);
                }
                if let Some(c) = new.character() {
                    table.add(c, v);
                }
            }
        }
        st.generation = generation;
        Ok(new)
    }

    /// The record of a live item.
    pub fn get(&self, id: ItemId) -> Result<Option<Item>> {
        if !self.read_state().live.contains(&id) {
            return Ok(None);
        }
        self.store()?.item(id)
    }

    /// The stored (normalised) vector of a live item.
    pub fn vector(&self, id: ItemId) -> Result<Option<Vec<f32>>> {
        if !self.read_state().live.contains(&id) {
            return Ok(None);
        }
        self.store()?.vector(id)
    }

    /// The int8 copy of a live item's vector (present when opened with `store_int8`).
    pub fn quantized_vector(&self, id: ItemId) -> Result<Option<QuantizedVector>> {
        if !self.read_state().live.contains(&id) {
            return Ok(None);
        }
        self.store()?.quantized(id)
    }

    /// The thumbnail of a live item.
    pub fn thumbnail(&self, id: ItemId) -> Result<Option<Vec<u8>>> {
        if !self.read_state().live.contains(&id) {
            return Ok(None);
        }
        self.store()?.thumbnail(id)
    }

    /// [`crate::CatalogLogic::search`] with an explicit HNSW `ef` (for benchmarks and recall tuning).
    pub fn search_with_ef(
        &self,
        vector: &[f32],
        k: usize,
        filter: &Filter,
        ef: usize,
    ) -> Result<Vec<Hit>> {
        let q = self.check_vector(vector)?;
        let scored = self.scored(&q, k, filter, &HashSet::new(), ef)?;
        self.hits(scored)
    }

    /// Brute-force search over every live item matching `filter` (the reference HNSW is checked against).
    pub fn exact_search(&self, vector: &[f32], k: usize, filter: &Filter) -> Result<Vec<Hit>> {
        let q = self.check_vector(vector)?;
        let ids = self.candidate_ids(filter, &HashSet::new());
        let scored = self.exact(&q, &ids, k)?;
        self.hits(scored)
    }

    /// Live ids matching `filter` and not in `exclude`, in increasing order.
    pub(crate) fn candidate_ids(&self, filter: &Filter, exclude: &HashSet<ItemId>) -> Vec<ItemId> {
        let st = self.read_state();
        let mut ids = match st.postings.matching(filter) {
            Some(ids) => ids,
            None => st.live.iter().copied().collect(),
        };
        ids.retain(|id| !exclude.contains(id));
        ids.sort_unstable();
        ids
    }

    /// `(id, cosine)` of the best `k` matches of normalised `q`; exact when the filter is small or
    /// the graph walk finds fewer than `k` of the matching items. An int8 graph proposes
    /// [`GraphPrecision::candidates`] items, rescored with the stored f32 vectors.
    pub(crate) fn scored(
        &self,
        q: &[f32],
        k: usize,
        filter: &Filter,
        exclude: &HashSet<ItemId>,
        ef: usize,
    ) -> Result<Vec<(ItemId, f32)>> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let st = self.read_state();
        let precision = st.ann.precision();
        let wanted = precision.candidates(k);
        let (hits, available) = match st.postings.matching(filter) {
            Some(mut ids) => {
                ids.retain(|id| !exclude.contains(id));
                if ids.len() <= self.options.exact_threshold {
                    drop(st);
                    return self.exact(q, &ids, k);
                }
                let allowed: HashSet<usize> = ids.iter().map(|&id| id as usize).collect();
                let accept = |id: &usize| allowed.contains(id);
                (st.ann.search(q, wanted, ef, &accept, None), ids.len())
            }
            None => {
                let accept = |id: &usize| {
                    st.live.contains(&(*id as ItemId)) && !exclude.contains(&(*id as ItemId))
                };
                let excluded_live = exclude.iter().filter(|id| st.live.contains(id)).count();
                let tombstoned = st.ann.len().saturating_sub(st.live.len());
                (
                    st.ann
                        .search(q, wanted, ef, &accept, Some(tombstoned + excluded_live)),
                    st.live.len() - excluded_live,
                )
            }
        };
        drop(st);
        if hits.len() >= k.min(available) {
            return match precision {
                GraphPrecision::F32 => Ok(hits),
                GraphPrecision::Int8 => {
                    let ids: Vec<ItemId> = hits.iter().map(|&(id, _)| id).collect();
                    self.exact(q, &ids, k)
                }
            };
        }
        tracing::debug!(
            found = hits.len(),
            k,
            available,
            "graph walk came short; exact search"
        );
        let ids = self.candidate_ids(filter, exclude);
        self.exact(q, &ids, k)
    }

    /// Exact top-`k` of normalised `q` over `ids` (vectors read from the store).
    pub(crate) fn exact(&self, q: &[f32], ids: &[ItemId], k: usize) -> Result<Vec<(ItemId, f32)>> {
        let score = |&id: &ItemId| match self.store()?.vector(id)? {
            Some(v) => Ok(Some((id, vector::dot(q, &v)))),
            None => Ok(None),
        };
        // Waking rayon's workers costs more than scoring a graph's few dozen candidates.
        let scored = if ids.len() >= PARALLEL_EXACT_MIN {
            ids.par_iter().map(score).collect::<Result<Vec<_>>>()?
        } else {
            ids.iter().map(score).collect::<Result<Vec<_>>>()?
        };
        let mut scored = scored.into_iter().flatten().collect::<Vec<_>>();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(k);
        Ok(scored)
    }

    /// Attaches item records to scored ids (skipping any purged meanwhile).
    pub(crate) fn hits(&self, scored: Vec<(ItemId, f32)>) -> Result<Vec<Hit>> {
        let mut out = Vec::with_capacity(scored.len());
        for (id, score) in scored {
            if let Some(item) = self.store()?.item(id)? {
                out.push(Hit { id, score, item });
            }
        }
        Ok(out)
    }

    /// Rebuilds the graph from the store (e.g. after changing HNSW parameters, or to repair).
    /// Returns the number of live items indexed.
    /// Validates the copy descriptors of a new item (see [`checked_copies`]).
    fn check_copies(&self, copies: &[Vec<f32>]) -> Result<Vec<f32>> {
        checked_copies(copies, self.copy_dim()?)
    }

    /// Length of the copy descriptors the catalogue stores (`None`: it stores none yet).
    pub fn copy_dim(&self) -> Result<Option<usize>> {
        if let Some(index) = lock(&self.copy_index).as_ref() {
            return Ok(Some(index.dim()));
        }
        self.store()?.copy_dim()
    }

    /// Inserts newly stored items' copy descriptors into the copy graph, if it is built.
    fn index_copies(&self, copies: &[(ItemId, Vec<f32>)]) {
        if let Some(index) = lock(&self.copy_index).as_ref() {
            for (id, c) in copies.iter().filter(|(_, c)| !c.is_empty()) {
                index.insert(*id, c);
            }
        }
    }

    /// The copy graph, built from the store when this is the first copy search since the catalogue
    /// opened or its graphs were rebuilt. `None` when no item has copy descriptors.
    fn copy_graph(&self) -> Result<Option<Arc<CopyIndex>>> {
        let mut slot = lock(&self.copy_index);
        if slot.is_none() {
            let store = self.store()?;
            let Some(dim) = store.copy_dim()? else {
                return Ok(None);
            };
            let started = std::time::Instant::now();
            let entries = store.all_copies()?;
            *slot = Some(Arc::new(CopyIndex::build(
                &self.options.hnsw,
                dim,
                &entries,
            )));
            tracing::info!(
                items = entries.len(),
                secs = started.elapsed().as_secs_f32(),
                "built the copy graph"
            );
        }
        Ok(slot.clone())
    }

    /// The `k` live items whose views' copy descriptors are most similar to any of `queries` (an
    /// upload's views), best first, one per item. Empty when the catalogue has no copy
    /// descriptors; queries of another length than the stored descriptors are refused.
    pub fn search_copies(&self, queries: &[Vec<f32>], k: usize) -> Result<Vec<(CopyMatch, Item)>> {
        let Some(graph) = self.copy_graph()? else {
            return Ok(Vec::new());
        };
        check_query_views(queries, graph.dim())?;
        let matches = {
            let st = self.read_state();
            graph.search(queries, k, self.options.hnsw.ef_search, &st.live)
        };
        let store = self.store()?;
        matches
            .into_iter()
            .filter_map(|m| {
                store
                    .item(m.id)
                    .transpose()
                    .map(|item| item.map(|i| (m, i)))
            })
            .collect()
    }

    /// The ids of the live items, ascending (from memory).
    pub fn live_ids(&self) -> Vec<ItemId> {
        let mut ids: Vec<ItemId> = self.read_state().live.iter().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The copy descriptors stored for an item, one per view.
    pub fn copies(&self, id: ItemId) -> Result<Vec<Vec<f32>>> {
        let dim = self.copy_dim()?.unwrap_or(0).max(1);
        Ok(self
            .store()?
            .copies(id)?
            .map(|c| c.chunks(dim).map(<[f32]>::to_vec).collect())
            .unwrap_or_default())
    }

    /// The calibrated copy verdict, if one was stored.
    pub fn copy_verdict(&self) -> Result<Option<CopyVerdict>> {
        self.store()?.copy_verdict()
    }

    /// Stores the calibrated copy verdict.
    pub fn set_copy_verdict(&self, verdict: &CopyVerdict) -> Result<()> {
        let _writer = self.begin_write()?;
        self.store()?.set_copy_verdict(verdict)
    }

    pub fn rebuild(&self) -> Result<usize> {
        let _writer = self.begin_write()?;
        self.rebuild_locked()
    }

    fn rebuild_locked(&self) -> Result<usize> {
        let generation = self.store()?.generation()?;
        let items = self.store()?.live_items()?;
        let ann = build_ann(&*self.store()?, &self.dir, &items, &self.options)?;
        let live = items.len();
        *self.write_state() = new_state(ann, items, generation, IndexOrigin::Built);
        *lock(&self.copy_index) = None;
        Ok(live)
    }

    /// Deletes tombstoned records and rebuilds the graph without them.
    pub fn compact(&self) -> Result<CompactReport> {
        let _writer = self.begin_write()?;
        let (purged, _) = self.store()?.purge_tombstoned()?;
        let live = self.rebuild_locked()?;
        Ok(CompactReport { purged, live })
    }

    /// Live and removed item counts from memory (see [`CatalogCounts`]).
    pub fn counts(&self) -> CatalogCounts {
        let st = self.read_state();
        CatalogCounts {
            live: st.live.len(),
            tombstoned: st.ann.len().saturating_sub(st.live.len()),
            generation: st.generation,
        }
    }

    /// Counts and sizes, read from the store (walks sled trees: for the CLI, not for health checks).
    pub fn stats(&self) -> Result<CatalogStats> {
        let st = self.read_state();
        let dump_bytes: u64 = std::fs::read_dir(dump::dump_dir(&self.dir))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        Ok(CatalogStats {
            items: self.store()?.item_count(),
            live: st.live.len(),
            tombstoned: self.store()?.tombstoned_ids()?.len(),
            dim: self.model.dim,
            fingerprint: self.model.fingerprint.clone(),
            bytes_on_disk: self.store()?.size_on_disk()? + dump_bytes,
            generation: st.generation,
            indexed_points: st.ann.len(),
            graph_precision: st.ann.precision(),
        })
    }

    /// Compares the live items in sled with what searches can return.
    pub fn check_consistency(&self) -> Result<Consistency> {
        let _writer = self.begin_write()?;
        let store_live: BTreeSet<ItemId> =
            self.store()?.live_items()?.iter().map(|i| i.id).collect();
        let st = self.read_state();
        let in_graph: HashSet<ItemId> = st.ann.ids().into_iter().collect();
        let searchable: BTreeSet<ItemId> = st
            .live
            .iter()
            .copied()
            .filter(|id| in_graph.contains(id))
            .collect();
        Ok(Consistency {
            live_in_store: store_live.len(),
            live_in_index: st.live.len(),
            missing_from_index: store_live.difference(&searchable).copied().collect(),
            stale_in_index: st
                .live
                .iter()
                .copied()
                .filter(|id| !store_live.contains(id))
                .collect(),
        })
    }

    /// Saves the graph so that the next open reloads it instead of rebuilding (no-op when the saved
    /// graph is current).
    pub fn save_index(&self) -> Result<()> {
        let _writer = self.begin_write()?;
        let st = self.read_state();
        let mut saved = lock(&self.saved_generation);
        if *saved == Some(st.generation) || st.ann.len() == 0 {
            return Ok(()); // current already, or nothing worth saving (hnsw_rs cannot dump an empty graph)
        }
        let tag = DumpTag {
            generation: st.generation,
            fingerprint: self.model.fingerprint.clone(),
            dim: self.model.dim,
            precision: st.ann.precision(),
        };
        dump::save(&st.ann, &self.dir, &tag)?;
        *saved = Some(st.generation);
        Ok(())
    }

    /// Saves the graph (when configured to) and closes the catalogue, reporting save errors.
    pub fn close(self) -> Result<()> {
        if self.options.save_index_on_close {
            self.save_index()?;
        }
        Ok(())
    }
}

impl Drop for Catalog {
    fn drop(&mut self) {
        if self.options.save_index_on_close {
            if let Err(e) = self.save_index() {
                tracing::warn!("{e}");
            }
        }
    }
}

/// Fresh derived state over `items` (all live) and a graph containing them.
fn new_state(ann: Ann, items: Vec<Item>, generation: u64, origin: IndexOrigin) -> IndexState {
    let mut postings = Postings::default();
    items.iter().for_each(|i| postings.insert(i));
    IndexState {
        ann,
        live: items.iter().map(|i| i.id).collect(),
        postings,
        generation,
        origin,
        centroids: Mutex::new(None),
    }
}

/// Builds the graph over the stored vectors of `items`.
fn build_ann(store: &Store, dir: &Path, items: &[Item], options: &OpenOptions) -> Result<Ann> {
    let started = std::time::Instant::now();
    let points = items
        .iter()
        .map(|i| match store.vector(i.id)? {
            Some(v) => Ok((v, i.id)),
            None => Err(CatalogError::corrupt(
                dir,
                format!("vectors/{} missing", i.id),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    let ann = Ann::build(&options.hnsw, &points, options.show_progress);
    tracing::info!(
        items = points.len(),
        secs = started.elapsed().as_secs_f32(),
        "built HNSW index"
    );
    Ok(ann)
}
