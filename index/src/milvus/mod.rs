//! The catalogue on Milvus: a [`Storage`] whose vectors and filtered HNSW search live in a Milvus
//! collection (a cluster, or milvus-lite for tests), with a small sled store beside it in the
//! catalogue folder for what is not a vector: item records and thumbnails, the content-hash index,
//! users' events and likes, enrolments, the open-set threshold, the id counter and the write
//! generation. Records and thumbnails stay beside Milvus because they are read by id after a
//! search (a key lookup, not a vector operation) and because thumbnails are binary blobs that
//! Milvus would hold in its query nodes' memory; the vectors — the part that outgrows one machine
//! — are only in Milvus.
//!
//! Writes keep the two in step under one writer lock: a new item is recorded in sled first, then
//! inserted into Milvus; when Milvus fails, the sled records are tombstoned again, so the caller's
//! error means "nothing was added". A search asks Milvus and keeps only the ids the service holds
//! live, so a row whose removal did not reach Milvus never comes back. Reads are `Strong` (see
//! `client`). Copy descriptors go to a second collection, one row per view (written after the
//! item's row, deleted with it); video frames are items like any other, so scene search works
//! too. Re-embedding is a copy into a new collection (`migrate::reembed_catalogue`); compaction
//! purges removed items' records and any rows of theirs a failed delete left behind.

mod client;
mod expr;
mod fields;
mod lite;

pub use client::MilvusConfig;
pub use lite::MilvusLite;

use crate::ann::HnswParams;
use crate::catalog::{lock, CatalogCounts, CatalogStats, CompactReport};
use crate::centroids::CentroidTable;
use crate::copy_index::CopyMatch;
use crate::copy_index::{best_per_item, checked_copies, points_for, points_of, view_points};
use crate::copy_index::{check_query_views, VIEW_STRIDE};
use crate::error::{CatalogError, Result};
use crate::filter::Filter;
use crate::limits;
use crate::record::{
    now_ms, AddOutcome, CopyVerdict, Event, Item, ItemId, ItemUpdate, ModelTag, NewItem,
    RestoredItem,
};
use crate::storage::Storage;
use crate::store::{Prepared, Store};
use crate::vector::VectorSum;
use crate::GraphPrecision;
use client::{Collection, Rows, MAX_LIMIT};
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError, RwLock};

/// The live ids, after removing the items recorded in sled whose Milvus row never arrived (the
/// process stopped between the two writes of an add, so the caller never heard of success):
/// without this they would count as live yet never be found, and their upload again would be
/// reported a duplicate. Adds are serialised, so such items are the newest ones, above every id
/// the collection holds; anything else missing (a wrong server, a collection emptied behind the
/// service's back) is refused with nothing changed.
fn reconcile(
    store: &Store,
    collection: &Collection,
    config: &MilvusConfig,
) -> Result<HashSet<ItemId>> {
    let mut live: HashSet<ItemId> = store.live_items()?.into_iter().map(|i| i.id).collect();
    let ids: Vec<ItemId> = live.iter().copied().collect();
    let present = collection.present(&ids)?;
    let newest_present = present.iter().copied().max().unwrap_or(0);
    let missing: Vec<ItemId> = ids.into_iter().filter(|id| !present.contains(id)).collect();
    let (cut_off, lost): (Vec<ItemId>, Vec<ItemId>) =
        missing.into_iter().partition(|&id| id > newest_present);
    if !lost.is_empty() || (present.is_empty() && !cut_off.is_empty()) {
        return Err(CatalogError::BackendUnavailable {
            backend: "milvus",
            setting: "milvus_uri",
            reason: format!(
                "collection {} lacks {} of the {} items recorded beside it; nothing was changed \
                 (is this the right server and collection?)",
                config.collection,
                lost.len().max(cut_off.len()),
                live.len()
            ),
        });
    }
    for id in cut_off {
        tracing::warn!(
            "item {id} was recorded but never reached Milvus; removing it (add it again)"
        );
        store.tombstone(id)?;
        live.remove(&id);
    }
    Ok(live)
}

/// The collection of copy-descriptor views beside `config`'s collection.
fn connect_copies(config: &MilvusConfig, dim: usize, graph: (usize, usize)) -> Result<Collection> {
    let name = format!("{}_copies", config.collection);
    Collection::connect(config, &name, Rows::CopyViews, dim, graph)
}

/// What the service keeps in memory about the collection.
struct LiveState {
    live: HashSet<ItemId>,
    generation: u64,
}

/// A catalogue stored in Milvus, with records beside it in sled.
pub struct MilvusStorage {
    store: Store,
    collection: Collection,
    /// The copy descriptors' views, once an item has any (`<collection>_copies`).
    copies: OnceLock<Collection>,
    /// What a new copies collection is created with.
    config: MilvusConfig,
    hnsw: (usize, usize),
    model: ModelTag,
    ef_search: usize,
    state: RwLock<LiveState>,
    writer: Mutex<()>,
    centroids: Mutex<Option<CentroidTable>>,
    /// Rows written since the last flush.
    unsealed: AtomicUsize,
}

/// The least `ef` of a filtered search. Milvus walks its HNSW graph with the filter as a bitset:
/// with 1 item in 50 let through, `ef` 32 finds half of the true top 10 and 512 all of them, for
/// ~20% fewer queries/s (BENCHMARKS.md, "Storage backends").
const FILTERED_EF: usize = 512;

/// Rows after which an add flushes the collection, so that the growing segment the server
/// searches without an index stays small.
const SEAL_EVERY: usize = 8_192;

impl MilvusStorage {
    /// Opens (creating when `model` is given) the catalogue whose records live in folder `dir` and
    /// whose vectors live in `config`'s collection.
    pub fn open(
        dir: impl AsRef<Path>,
        config: &MilvusConfig,
        model: Option<ModelTag>,
        hnsw: &HnswParams,
    ) -> Result<MilvusStorage> {
        let dir = dir.as_ref().to_path_buf();
        let (store, model) = Store::open_with_model(&dir, model.as_ref())?;
        let place = format!("Milvus collection {}", config.collection);
        match store.vectors_in()? {
            Some(stored) if stored == place => {}
            Some(stored) => {
                return Err(CatalogError::invalid(
                    format!(
                        "the records in {} belong to {stored}, not to {place}",
                        dir.display()
                    ),
                    "set milvus_collection to the collection these records belong to, or use \
                     another data folder for a new collection",
                ))
            }
            // A fresh store becomes this collection's record store.
            None if store.generation()? == 0 => store.set_vectors_in(&place)?,
            // Items whose vectors are in this folder: opening it here would drop them all as
            // "never reached Milvus".
            None => {
                return Err(CatalogError::invalid(
                    format!(
                        "{} holds an embedded catalogue (its vectors are in the folder), not the \
                         records of a Milvus-backed one",
                        dir.display()
                    ),
                    format!(
                        "copy it into Milvus with `animelens index --db {} export --to \
                         milvus://HOST:PORT/COLLECTION --records NEW_DIR` and use NEW_DIR",
                        dir.display()
                    ),
                ))
            }
        }
        let graph = (hnsw.max_nb_connection, hnsw.ef_construction);
        let collection =
            Collection::connect(config, &config.collection, Rows::Items, model.dim, graph)?;
        let live = reconcile(&store, &collection, config)?;
        let copies = OnceLock::new();
        if let Some(dim) = store.copy_dim()? {
            let _ = copies.set(connect_copies(config, dim, graph)?);
        }
        let generation = store.generation()?;
        Ok(MilvusStorage {
            store,
            collection,
            copies,
            config: config.clone(),
            hnsw: graph,
            model,
            ef_search: hnsw.ef_search,
            state: RwLock::new(LiveState { live, generation }),
            writer: Mutex::new(()),
            centroids: Mutex::new(None),
            unsealed: AtomicUsize::new(0),
        })
    }

    /// Flushes the collections' growing segments (see [`Storage::settle`]).
    fn seal(&self) -> Result<()> {
        self.collection.flush()?;
        if let Some(copies) = self.copies.get() {
            copies.flush()?;
        }
        self.unsealed.store(0, Ordering::Relaxed);
        Ok(())
    }

    fn live(&self) -> std::sync::RwLockReadGuard<'_, LiveState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_live(&self, id: ItemId) -> bool {
        self.live().live.contains(&id)
    }

    /// One item ready for [`Self::add_prepared`]: its sled record (which notes the copy
    /// descriptors' length but not the descriptors: they go to the copies collection only), its
    /// normalised vector and its views' descriptors back to back (checked against the stored
    /// length `copy_dim`).
    fn prepare(
        &self,
        item: Item,
        thumbnail: Vec<u8>,
        vector: &[f32],
        copies: &[Vec<f32>],
        copy_dim: Option<usize>,
    ) -> Result<(Prepared, Vec<f32>, Vec<f32>)> {
        let vector = self.check_vector(vector)?;
        let views = checked_copies(copies, copy_dim)?;
        let prepared = Prepared {
            copy_dim: copies.first().map_or(0, Vec::len),
            copies: Vec::new(),
            vector: Vec::new(),
            store_int8: false,
            item,
            thumbnail,
        };
        Ok((prepared, vector, views))
    }

    /// Writes prepared items (see [`Self::prepare`]) to sled, then their rows to Milvus, then
    /// their views' rows; when Milvus fails, the rows written are deleted again, the new sled
    /// records tombstoned, and the error returned.
    fn add_prepared(&self, batch: Vec<(Prepared, Vec<f32>, Vec<f32>)>) -> Result<Vec<AddOutcome>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (prepared, vectors): (Vec<Prepared>, Vec<_>) =
            batch.into_iter().map(|(p, v, c)| (p, (v, c))).unzip();
        let _writer = lock(&self.writer);
        let copy_dim = prepared.iter().map(|p| p.copy_dim).find(|&d| d > 0);
        let copies = match copy_dim {
            Some(dim) => Some(self.copies_collection(dim)?),
            None => None,
        };
        let (written, generation) = self.store.add_items(&prepared)?;
        let mut fresh: Vec<(Item, Vec<f32>)> = Vec::new();
        let mut points: Vec<(Vec<f32>, u64)> = Vec::new();
        for (&(id, duplicate), (p, (v, copies))) in
            written.iter().zip(prepared.into_iter().zip(vectors))
        {
            if !duplicate {
                let mut item = p.item;
                item.id = id;
                fresh.push((item, v));
                points.extend(points_of(id, &copies, p.copy_dim));
            }
        }
        let rows: Vec<(&[f32], &Item)> = fresh.iter().map(|(i, v)| (v.as_slice(), i)).collect();
        let views: Vec<(u64, &[f32])> = points.iter().map(|(d, p)| (*p, d.as_slice())).collect();
        let outcome = self.collection.write(&rows, false).and_then(|()| {
            let written = copies.map_or(Ok(()), |c| c.write_views(&views));
            if written.is_err() {
                let ids: Vec<ItemId> = fresh.iter().map(|(i, _)| i.id).collect();
                if let Err(undo) = self.collection.delete(&ids) {
                    tracing::error!("could not undo the Milvus rows of {ids:?}: {undo}");
                }
            }
            written
        });
        if let Err(e) = outcome {
            for (item, _) in &fresh {
                if let Err(undo) = self.store.tombstone(item.id) {
                    tracing::error!(
                        "could not undo item {} after Milvus failed: {undo}",
                        item.id
                    );
                }
            }
            return Err(e);
        }
        self.publish(&fresh, &[], generation);
        let unsealed = self.unsealed.fetch_add(fresh.len(), Ordering::Relaxed) + fresh.len();
        if unsealed >= SEAL_EVERY {
            // The items are added either way; a failed flush is retried at the next add.
            if let Err(e) = self.seal() {
                tracing::warn!("could not flush the Milvus collection (searches stay slower): {e}");
            }
        }
        Ok(written
            .into_iter()
            .map(|(id, duplicate)| AddOutcome { id, duplicate })
            .collect())
    }

    /// The copies collection, connected (and created) with descriptors of `dim` values the
    /// first time an item brings any. Called under the writer lock.
    fn copies_collection(&self, dim: usize) -> Result<&Collection> {
        if let Some(copies) = self.copies.get() {
            return Ok(copies);
        }
        let copies = connect_copies(&self.config, dim, self.hnsw)?;
        Ok(self.copies.get_or_init(|| copies))
    }

    /// Publishes a write: live-set changes, centroid updates, the new generation.
    fn publish(
        &self,
        added: &[(Item, Vec<f32>)],
        removed: &[(Item, Option<Vec<f32>>)],
        generation: u64,
    ) {
        let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let mut table = lock(&self.centroids);
        for (item, v) in removed {
            st.live.remove(&item.id);
            if let (Some(t), Some(c), Some(v)) = (table.as_mut(), item.character(), v) {
                t.subtract(c, v);
            }
        }
        for (item, v) in added {
            st.live.insert(item.id);
            if let (Some(t), Some(c)) = (table.as_mut(), item.character()) {
                t.add(c, v);
            }
        }
        st.generation = generation;
    }

    /// Per-character sums over the live items (vectors fetched from Milvus) and enrolments.
    fn compute_table(&self) -> Result<CentroidTable> {
        let labelled: Vec<(ItemId, String)> = self
            .store
            .live_items()?
            .into_iter()
            .filter_map(|i| Some((i.id, i.character()?.to_string())))
            .collect();
        let ids: Vec<ItemId> = labelled.iter().map(|(id, _)| *id).collect();
        let vectors = self.collection.vectors(&ids)?;
        let mut table = CentroidTable::default();
        for (id, name) in &labelled {
            if let Some(v) = vectors.get(id) {
                table.add(name, v);
            }
        }
        for (name, sum) in self.store.enrolled()? {
            table.merge(&name, &sum);
        }
        Ok(table)
    }
}

impl Storage for MilvusStorage {
    fn model(&self) -> &ModelTag {
        &self.model
    }
    fn ef_search(&self) -> usize {
        self.ef_search
    }
    fn backend_name(&self) -> &'static str {
        "milvus"
    }
    fn model_source(&self) -> Result<Option<String>> {
        self.store.model_source()
    }
    fn set_model_source(&self, source: &str) -> Result<()> {
        let _writer = lock(&self.writer);
        self.store.set_model_source(source)
    }
    fn check_ready(&self) -> Result<()> {
        self.collection.check_ready()
    }
    fn copy_dim(&self) -> Result<Option<usize>> {
        self.store.copy_dim()
    }
    fn compact(&self) -> Result<CompactReport> {
        let _writer = lock(&self.writer);
        let ids = self.store.tombstoned_ids()?;
        // Rows whose delete failed at removal time go now, before their records do.
        self.collection.delete(&ids)?;
        if let Some(copies) = self.copies.get() {
            let points: Vec<u64> = ids.iter().flat_map(|&id| view_points(id)).collect();
            copies.delete(&points)?;
        }
        let (purged, generation) = self.store.purge_tombstoned()?;
        self.state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .generation = generation;
        self.seal()?;
        Ok(CompactReport {
            purged,
            live: self.live().live.len(),
        })
    }
    fn copies(&self, ids: &[ItemId]) -> Result<Vec<Vec<Vec<f32>>>> {
        let Some(copies) = self.copies.get() else {
            return Ok(vec![Vec::new(); ids.len()]);
        };
        let points: Vec<u64> = ids.iter().flat_map(|&id| view_points(id)).collect();
        let found = copies.vectors(&points)?;
        Ok(ids
            .iter()
            .map(|&id| {
                view_points(id)
                    .map_while(|p| found.get(&p).cloned())
                    .collect()
            })
            .collect())
    }
    fn search_copies(&self, views: &[Vec<f32>], k: usize) -> Result<Vec<(CopyMatch, Item)>> {
        let Some(copies) = self.copies.get() else {
            return Ok(Vec::new());
        };
        check_query_views(views, copies.dim())?;
        let wide = points_for(k).min(MAX_LIMIT);
        let mut hits = Vec::new();
        for (query_view, q) in views.iter().enumerate() {
            let found = copies.search(q, wide, String::new(), self.ef_search.max(wide))?;
            hits.extend(
                found
                    .into_iter()
                    .map(|(point, sim)| (query_view, point, sim)),
            );
        }
        let matches = {
            let st = self.live();
            let live_hits = hits
                .into_iter()
                .filter(|(_, point, _)| st.live.contains(&(point / VIEW_STRIDE)));
            best_per_item(live_hits, k)
        };
        matches
            .into_iter()
            .filter_map(|m| self.store.item(m.id).transpose().map(|i| i.map(|i| (m, i))))
            .collect()
    }
    fn copy_verdict(&self) -> Result<Option<CopyVerdict>> {
        self.store.copy_verdict()
    }
    fn set_copy_verdict(&self, verdict: &CopyVerdict) -> Result<()> {
        let _writer = lock(&self.writer);
        self.store.set_copy_verdict(verdict)
    }

    fn add_batch(&self, items: Vec<NewItem>) -> Result<Vec<AddOutcome>> {
        let added_at_ms = now_ms();
        items.iter().try_for_each(limits::check_new_item)?;
        let copy_dim = self.store.copy_dim()?;
        let prepared = items
            .into_iter()
            .map(|n| {
                let item = n.record(added_at_ms);
                self.prepare(item, n.thumbnail, &n.vector, &n.copies, copy_dim)
            })
            .collect::<Result<Vec<_>>>()?;
        self.add_prepared(prepared)
    }

    fn add_restored(&self, items: Vec<RestoredItem>) -> Result<Vec<AddOutcome>> {
        let copy_dim = self.store.copy_dim()?;
        let prepared = items
            .into_iter()
            .map(|r| {
                limits::check_restored(&r.item)?;
                self.prepare(r.item, r.thumbnail, &r.vector, &r.copies, copy_dim)
            })
            .collect::<Result<Vec<_>>>()?;
        self.add_prepared(prepared)
    }

    fn remove(&self, id: ItemId) -> Result<()> {
        let _writer = lock(&self.writer);
        if !self.is_live(id) {
            return Err(CatalogError::UnknownItem { id });
        }
        let v = self.collection.vectors(&[id])?.remove(&id);
        let (item, generation) = self.store.tombstone(id)?;
        self.publish(&[], &[(item, v)], generation);
        // Searches drop ids that are not live, so rows left behind are invisible already.
        if let Err(e) = self.collection.delete(&[id]) {
            tracing::warn!("item {id} is removed but its Milvus row stays until a retry: {e}");
        }
        if let Some(copies) = self.copies.get() {
            if let Err(e) = copies.delete(&view_points(id).collect::<Vec<_>>()) {
                tracing::warn!("item {id} is removed but its copy views stay in Milvus: {e}");
            }
        }
        Ok(())
    }

    fn update(&self, id: ItemId, update: &ItemUpdate) -> Result<Item> {
        limits::check_update(update)?;
        let _writer = lock(&self.writer);
        if !self.is_live(id) {
            return Err(CatalogError::UnknownItem { id });
        }
        let v = self
            .collection
            .vectors(&[id])?
            .remove(&id)
            .ok_or(CatalogError::UnknownItem { id })?;
        let (old, new, generation) = self.store.update_item(id, update)?;
        if let Err(e) = self.collection.write(&[(&v, &new)], true) {
            self.store.update_item(
                id,
                &ItemUpdate {
                    labels: Some(old.labels.clone()),
                    tags: Some(old.tags.clone()),
                },
            )?;
            return Err(e);
        }
        self.publish(&[(new.clone(), v.clone())], &[(old, Some(v))], generation);
        Ok(new)
    }

    fn get(&self, id: ItemId) -> Result<Option<Item>> {
        if !self.is_live(id) {
            return Ok(None);
        }
        self.store.item(id)
    }
    fn vector(&self, id: ItemId) -> Result<Option<Vec<f32>>> {
        Ok(self.vectors(&[id])?.pop().flatten())
    }
    fn vectors(&self, ids: &[ItemId]) -> Result<Vec<Option<Vec<f32>>>> {
        let live: Vec<ItemId> = ids.iter().copied().filter(|&id| self.is_live(id)).collect();
        let mut found = self.collection.vectors(&live)?;
        Ok(ids.iter().map(|id| found.remove(id)).collect())
    }
    fn thumbnail(&self, id: ItemId) -> Result<Option<Vec<u8>>> {
        if !self.is_live(id) {
            return Ok(None);
        }
        self.store.thumbnail(id)
    }
    fn find_by_hash(&self, hash: &str) -> Result<Option<ItemId>> {
        if hash.is_empty() {
            return Ok(None);
        }
        Ok(self
            .store
            .live_by_hash(hash)?
            .filter(|&id| self.is_live(id)))
    }

    fn nearest(
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
        let ef = if filter.is_empty() {
            ef
        } else {
            ef.max(FILTERED_EF)
        };
        let expression = expr::filter_expression(filter, exclude);
        let mut hits = self
            .collection
            .search(q, k.min(MAX_LIMIT), expression, ef)?;
        let st = self.live();
        hits.retain(|(id, _)| st.live.contains(id));
        Ok(hits)
    }

    fn matching_ids(&self, filter: &Filter, exclude: &HashSet<ItemId>) -> Result<Vec<ItemId>> {
        let live = self.live().live.clone();
        let mut ids: Vec<ItemId> = self
            .store
            .live_items()?
            .into_iter()
            .filter(|i| live.contains(&i.id) && !exclude.contains(&i.id) && filter.matches(i))
            .map(|i| i.id)
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    fn live_ids(&self) -> Result<Vec<ItemId>> {
        let mut ids: Vec<ItemId> = self.live().live.iter().copied().collect();
        ids.sort_unstable();
        Ok(ids)
    }

    fn counts(&self) -> CatalogCounts {
        let st = self.live();
        CatalogCounts {
            live: st.live.len(),
            tombstoned: 0,
            generation: st.generation,
        }
    }

    fn stats(&self) -> Result<CatalogStats> {
        let st = self.live();
        Ok(CatalogStats {
            items: self.store.item_count(),
            live: st.live.len(),
            tombstoned: self.store.tombstoned_ids()?.len(),
            dim: self.model.dim,
            fingerprint: self.model.fingerprint.clone(),
            bytes_on_disk: self.store.size_on_disk()?,
            generation: st.generation,
            indexed_points: st.live.len(),
            graph_precision: GraphPrecision::F32,
        })
    }

    fn character_centroids(&self) -> Result<Vec<(String, Vec<f32>)>> {
        let mut cached = lock(&self.centroids);
        if cached.is_none() {
            *cached = Some(self.compute_table()?);
        }
        Ok(cached.as_ref().expect("just computed").centroids())
    }

    fn store_enrolment(&self, name: &str, shots: &VectorSum) -> Result<usize> {
        let _writer = lock(&self.writer);
        let total = self.store.enroll(name, shots)?;
        if let Some(table) = lock(&self.centroids).as_mut() {
            table.merge(name, shots);
        }
        Ok(total.count)
    }
    fn enrolments(&self) -> Result<Vec<(String, VectorSum)>> {
        self.store.enrolled()
    }
    fn settle(&self) -> Result<()> {
        let _writer = lock(&self.writer);
        self.seal()
    }
    fn stored_threshold(&self) -> Result<Option<f32>> {
        self.store.threshold()
    }
    fn store_threshold(&self, threshold: f32) -> Result<()> {
        let _writer = lock(&self.writer);
        self.store.set_threshold(threshold)
    }
    fn store_event(&self, user: &str, event: &Event) -> Result<()> {
        let _writer = lock(&self.writer);
        self.store.record_event(user, event)
    }
    fn user_events(&self, user: &str) -> Result<Vec<Event>> {
        self.store.events(user)
    }
    fn users(&self) -> Result<Vec<String>> {
        self.store.users()
    }
    fn popularity(&self) -> Result<Vec<(ItemId, u64)>> {
        self.store.popularity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::CatalogLogic;
    use crate::MilvusLite;

    /// An add killed between its sled write and its Milvus insert leaves a record without a row;
    /// the next open removes it, so the picture can be added again instead of being reported a
    /// duplicate that is never found. (Skipped without milvus-lite, like the backend suite.)
    #[test]
    fn an_add_cut_off_before_milvus_is_undone_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let Some(server) = MilvusLite::start_for_test(&dir.path().join("milvus")) else {
            return;
        };
        let config = MilvusConfig {
            uri: server.uri(),
            collection: "cut_off".into(),
            token: None,
        };
        let model = ModelTag {
            fingerprint: "fp".into(),
            dim: 4,
        };
        let records = dir.path().join("records");
        let open = || {
            MilvusStorage::open(
                &records,
                &config,
                Some(model.clone()),
                &HnswParams::default(),
            )
            .unwrap()
        };
        let storage = open();
        let item = |hash: &str, v: Vec<f32>| NewItem {
            source: format!("{hash}.png"),
            content_hash: hash.into(),
            vector: v,
            ..NewItem::default()
        };
        let kept = storage
            .add_batch(vec![item("kept", vec![1.0, 0.0, 0.0, 0.0])])
            .unwrap()[0]
            .id;
        // What the killed add got done: the sled record only.
        let prepared = Prepared {
            item: Item {
                id: 0,
                source: "lost.png".into(),
                labels: Default::default(),
                tags: vec![],
                width: 1,
                height: 1,
                content_hash: "lost".into(),
                added_at_ms: 0,
                frame: None,
            },
            vector: Vec::new(),
            store_int8: false,
            thumbnail: vec![],
            copies: vec![],
            copy_dim: 0,
        };
        storage.store.add_items(&[prepared]).unwrap();
        drop(storage);
        let storage = open();
        assert_eq!(storage.live_ids().unwrap(), vec![kept]);
        assert_eq!(storage.find_by_hash("lost").unwrap(), None);
        let again = storage
            .add_batch(vec![item("lost", vec![0.0, 1.0, 0.0, 0.0])])
            .unwrap();
        assert!(!again[0].duplicate);
        let hits = storage
            .search(&[0.0, 1.0, 0.0, 0.0], 1, &Filter::any())
            .unwrap();
        assert_eq!(hits[0].id, again[0].id);
    }

    /// A records folder opens only as what it is: the embedded catalogue refuses it, another
    /// collection refuses it, an empty server (a wrong `milvus_uri`) refuses it with nothing
    /// changed, and an embedded catalogue is not taken for Milvus records (which would drop
    /// every item as "never reached Milvus").
    #[test]
    fn a_folder_opens_only_with_its_own_backend_and_collection() {
        let dir = tempfile::tempdir().unwrap();
        let Some(server) = MilvusLite::start_for_test(&dir.path().join("milvus")) else {
            return;
        };
        let other = MilvusLite::start_for_test(&dir.path().join("other")).unwrap();
        let model = ModelTag {
            fingerprint: "fp".into(),
            dim: 4,
        };
        let config = |uri: String, collection: &str| MilvusConfig {
            uri,
            collection: collection.into(),
            token: None,
        };
        let open = |records: &std::path::Path, config: &MilvusConfig| {
            MilvusStorage::open(records, config, Some(model.clone()), &HnswParams::default())
        };
        let item = NewItem {
            source: "a.png".into(),
            content_hash: "a".into(),
            vector: vec![1.0, 0.0, 0.0, 0.0],
            ..NewItem::default()
        };
        let records = dir.path().join("records");
        let right = config(server.uri(), "right");
        open(&records, &right)
            .unwrap()
            .add_batch(vec![item.clone()])
            .unwrap();

        let embedded = crate::Catalog::open(&records, crate::OpenOptions::new(model.clone()));
        assert!(embedded
            .err()
            .unwrap()
            .to_string()
            .contains("Milvus-backed"));
        let wrong_name = open(&records, &config(server.uri(), "wrong"));
        assert!(wrong_name
            .err()
            .unwrap()
            .to_string()
            .contains("belong to Milvus collection right"));
        let wrong_server = open(&records, &config(other.uri(), "right"));
        assert!(wrong_server
            .err()
            .unwrap()
            .to_string()
            .contains("nothing was changed"));
        assert_eq!(open(&records, &right).unwrap().live_ids().unwrap().len(), 1);

        let local = dir.path().join("local");
        let cat = crate::Catalog::open(&local, crate::OpenOptions::new(model.clone())).unwrap();
        cat.add_batch(vec![item]).unwrap();
        drop(cat);
        let taken = open(&local, &right);
        assert!(taken
            .err()
            .unwrap()
            .to_string()
            .contains("holds an embedded catalogue"));
        let cat = crate::Catalog::open(&local, crate::OpenOptions::new(model.clone())).unwrap();
        assert_eq!(cat.live_ids().len(), 1);
    }
}
