//! The sled store, the catalogue's source of truth. One tree per record kind; every write runs in
//! one sled transaction (atomic across trees) and is flushed to disk before the call returns.
//!
//! Trees: `items` (id → JSON [`Item`]), `vectors` (id → f32 LE), `vectors_q8` (id → int8 copy,
//! optional), `copies` (id → the copy descriptors of its views, f32 LE back to back; optional), `thumbnails` (id → JPEG), `by_hash` (content hash → id of the live item),
//! `tombstones` (id → removal time), `meta` (model tag, generation, next id, open-set threshold,
//! current vector set), `users`, `events` (user ␀ time seq → JSON [`Event`]; the newest
//! [`MAX_EVENTS_PER_USER`] per user are kept), `likes` (user ␀ id, one key per user who liked an
//! item), `popularity` (id → number of distinct users who liked it: a user liking an item again
//! does not count twice), `characters` (enrolled character → few-shot vector sum).
//!
//! Vector sets: the vectors of one model live in `vectors`/`vectors_q8`/`copies` (set 0) or
//! `vectors.N`/`vectors_q8.N`/`copies.N` (set N). Re-embedding with a new model writes set N+1 beside the
//! current one, then one transaction on `meta` switches the set and the model tag together; a
//! crash before the switch leaves the old set current, and [`Store::open`] drops any set that is
//! not current (leftovers of an interrupted re-embedding, or the old set after a switch).
//!
//! I/O failures are sticky in sled: after one write fails (a full disk), sled answers every later
//! write with the same error until the database is opened again. [`Store::has_failed`] says so, and
//! the catalogue reopens the store before its next write (see `Catalog::begin_write`).

use crate::error::{CatalogError, Result};
use crate::limits::MAX_EVENTS_PER_USER;
use crate::record::{
    now_ms, CopyVerdict, Event, EventKind, Item, ItemId, ItemUpdate, ItemVectors, ModelTag,
};
use crate::vector::{self, QuantizedVector, VectorSum};
use serde::{Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
    UnabortableTransactionError,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

const KEY_MODEL: &[u8] = b"model";
const KEY_GENERATION: &[u8] = b"generation";

/// Increments the catalogue generation inside a transaction and returns the new value.
fn bump_generation(meta: &TransactionalTree) -> Result<u64, UnabortableTransactionError> {
    let generation = meta
        .get(KEY_GENERATION)?
        .and_then(|v| id_of(&v))
        .unwrap_or(0)
        + 1;
    meta.insert(KEY_GENERATION, &generation.to_be_bytes())?;
    Ok(generation)
}
const KEY_NEXT_ID: &[u8] = b"next_id";
const KEY_THRESHOLD: &[u8] = b"open_set_threshold";
const KEY_VECTOR_SET: &[u8] = b"vector_set";
const KEY_MODEL_SOURCE: &[u8] = b"model_source";
const KEY_COPY_VERDICT: &[u8] = b"copy_verdict";
const KEY_COPY_DIM: &[u8] = b"copy_dim";
/// Set in the record store of a Milvus-backed catalogue: where its vectors are.
const KEY_VECTORS_IN: &[u8] = b"vectors_in";

/// The trees of one vector set: each holds one kind of vector.
const VECTOR_TREES: [&str; 3] = ["vectors", "vectors_q8", "copies"];

/// Names of the f32, int8 and copy-descriptor trees of vector set `n`.
fn vector_tree_names(n: u64) -> [String; 3] {
    VECTOR_TREES.map(|t| match n {
        0 => t.to_string(),
        n => format!("{t}.{n}"),
    })
}

/// Whether a tree name belongs to some vector set.
fn is_vector_tree(name: &[u8]) -> bool {
    VECTOR_TREES.iter().any(|t| {
        name == t.as_bytes() || (name.starts_with(t.as_bytes()) && name.get(t.len()) == Some(&b'.'))
    })
}

/// A vector set being written by a re-embedding, not yet current.
pub(crate) struct PendingVectorSet {
    n: u64,
    vectors: sled::Tree,
    vectors_q8: sled::Tree,
    copies: sled::Tree,
    int8: bool,
    /// Length of the copy descriptors written so far.
    copy_dim: Option<usize>,
}

/// An item ready to be written: metadata (id filled in by the store), encoded vectors, thumbnail.
pub(crate) struct Prepared {
    pub(crate) item: Item,
    pub(crate) vector: Vec<f32>,
    pub(crate) store_int8: bool,
    pub(crate) thumbnail: Vec<u8>,
    /// The copy descriptors of the item's views, back to back (empty: none).
    pub(crate) copies: Vec<f32>,
    /// The length of one of them.
    pub(crate) copy_dim: usize,
}

/// An item's vectors encoded for its trees.
struct EncodedVectors {
    vector: Vec<u8>,
    q8: Option<Vec<u8>>,
    copies: Vec<u8>,
}

/// A user's summary record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserRecord {
    first_seen_ms: u64,
    last_seen_ms: u64,
    events: u64,
}

/// Stored form of an enrolled character: the sum of its few-shot vectors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EnrolledRecord {
    sum: Vec<f64>,
    shots: usize,
    enrolled_at_ms: u64,
}

/// Handle on the sled database and its trees.
pub(crate) struct Store {
    dir: PathBuf,
    db: sled::Db,
    items: sled::Tree,
    vectors: sled::Tree,
    vectors_q8: sled::Tree,
    copies: sled::Tree,
    thumbnails: sled::Tree,
    by_hash: sled::Tree,
    tombstones: sled::Tree,
    meta: sled::Tree,
    users: sled::Tree,
    events: sled::Tree,
    likes: sled::Tree,
    popularity: sled::Tree,
    characters: sled::Tree,
    /// Set when sled reported an I/O error: its later writes fail until it is reopened.
    failed: AtomicBool,
}

fn key(id: ItemId) -> [u8; 8] {
    id.to_be_bytes()
}

fn id_of(bytes: &[u8]) -> Option<ItemId> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

impl Store {
    /// The sled folder inside a catalogue folder.
    pub(crate) fn path_in(dir: &Path) -> PathBuf {
        dir.join("store")
    }

    /// Opens the sled database. A handle closed a moment ago may still hold the folder's lock
    /// (sled's flusher thread lets go of it asynchronously), so a lock held by someone is retried
    /// for a short while before it is reported as [`CatalogError::Locked`].
    fn open_db(dir: &Path) -> Result<sled::Db> {
        const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);
        let started = std::time::Instant::now();
        loop {
            match sled::Config::new().path(Self::path_in(dir)).open() {
                Ok(db) => return Ok(db),
                Err(e) => match CatalogError::storage(dir, e) {
                    CatalogError::Locked { .. } if started.elapsed() < LOCK_PATIENCE => {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    other => return Err(other),
                },
            }
        }
    }

    /// Opens the store of catalogue folder `dir` with the model its vectors come from: `wanted`
    /// must match the stored model; a new store (only when `wanted` is given) records it.
    pub(crate) fn open_with_model(
        dir: &Path,
        wanted: Option<&ModelTag>,
    ) -> Result<(Store, ModelTag)> {
        if wanted.is_none() && !Self::path_in(dir).exists() {
            return Err(CatalogError::NotInitialised { dir: dir.into() });
        }
        let store = Self::open(dir)?;
        let model = match (store.model()?, wanted) {
            (Some(stored), Some(wanted)) if &stored != wanted => {
                return Err(CatalogError::ModelMismatch {
                    dir: dir.into(),
                    stored: stored.fingerprint,
                    stored_dim: stored.dim,
                    requested: wanted.fingerprint.clone(),
                    requested_dim: wanted.dim,
                })
            }
            (Some(stored), _) => stored,
            (None, Some(wanted)) => {
                if wanted.dim == 0 {
                    return Err(CatalogError::invalid(
                        "embedding dimension 0",
                        "pass the model's embedding dimension (1024 for GoogLeNet)",
                    ));
                }
                store.init_model(wanted)?;
                wanted.clone()
            }
            (None, None) => return Err(CatalogError::NotInitialised { dir: dir.into() }),
        };
        Ok((store, model))
    }

    /// Opens (creating if needed) the store of catalogue folder `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Store> {
        let err = |e| CatalogError::storage(dir, e);
        std::fs::create_dir_all(dir).map_err(|e| CatalogError::from_io(dir.to_path_buf(), e))?;
        let db = Self::open_db(dir)?;
        let tree = |name: &str| db.open_tree(name).map_err(err);
        let meta = tree("meta")?;
        let set = meta
            .get(KEY_VECTOR_SET)
            .map_err(err)?
            .and_then(|v| id_of(&v))
            .unwrap_or(0);
        let current = vector_tree_names(set);
        for name in db.tree_names() {
            if is_vector_tree(&name) && !current.iter().any(|c| c.as_bytes() == &name[..]) {
                tracing::info!(
                    tree = %String::from_utf8_lossy(&name),
                    "dropping a vector set that is not current"
                );
                db.drop_tree(&name).map_err(err)?;
            }
        }
        let [vectors, vectors_q8, copies] = current;
        Ok(Store {
            items: tree("items")?,
            vectors: tree(&vectors)?,
            vectors_q8: tree(&vectors_q8)?,
            copies: tree(&copies)?,
            thumbnails: tree("thumbnails")?,
            by_hash: tree("by_hash")?,
            tombstones: tree("tombstones")?,
            meta,
            users: tree("users")?,
            events: tree("events")?,
            likes: tree("likes")?,
            popularity: tree("popularity")?,
            characters: tree("characters")?,
            dir: dir.to_path_buf(),
            db,
            failed: AtomicBool::new(false),
        })
    }

    fn err(&self, e: sled::Error) -> CatalogError {
        if matches!(e, sled::Error::Io(_)) {
            self.failed.store(true, Ordering::Release);
        }
        CatalogError::storage(&self.dir, e)
    }

    /// Whether sled met an I/O error since this store was opened (every later write would fail).
    pub(crate) fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Marks the store as failed, as an I/O error would (tests of the reopen path).
    #[cfg(test)]
    pub(crate) fn mark_failed(&self) {
        self.failed.store(true, Ordering::Release);
    }

    fn tx_err(&self, e: TransactionError<CatalogError>) -> CatalogError {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => self.err(e),
        }
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map(|_| ()).map_err(|e| self.err(e))
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, what: &str, bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes)
            .map_err(|e| CatalogError::corrupt(&self.dir, format!("{what}: {e}")))
    }

    fn u64_meta(&self, k: &[u8]) -> Result<u64> {
        Ok(self
            .meta
            .get(k)
            .map_err(|e| self.err(e))?
            .and_then(|v| id_of(&v))
            .unwrap_or(0))
    }

    /// The model tag, or `None` for a fresh store.
    pub(crate) fn model(&self) -> Result<Option<ModelTag>> {
        match self.meta.get(KEY_MODEL).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(self.decode("meta/model", &v)?)),
            None => Ok(None),
        }
    }

    /// Where this store's vectors live when they are not in it (the Milvus backend's record
    /// store says which collection), `None` for an embedded catalogue.
    pub(crate) fn vectors_in(&self) -> Result<Option<String>> {
        match self.meta.get(KEY_VECTORS_IN).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
            None => Ok(None),
        }
    }

    /// Marks the store as the record store of vectors kept elsewhere (see [`Store::vectors_in`]).
    #[cfg(feature = "milvus")]
    pub(crate) fn set_vectors_in(&self, place: &str) -> Result<()> {
        self.meta
            .insert(KEY_VECTORS_IN, place.as_bytes())
            .map_err(|e| self.err(e))?;
        self.flush()
    }

    /// Records the model tag of a fresh store.
    pub(crate) fn init_model(&self, model: &ModelTag) -> Result<()> {
        let bytes = serde_json::to_vec(model).expect("ModelTag serialises");
        self.meta
            .insert(KEY_MODEL, bytes)
            .map_err(|e| self.err(e))?;
        self.flush()
    }

    /// The write generation: incremented by every write that changes items or vectors.
    pub(crate) fn generation(&self) -> Result<u64> {
        self.u64_meta(KEY_GENERATION)
    }

    /// Writes a batch of items in one transaction. Returns, per input, `(id, duplicate)` and the new
    /// generation. Items whose content hash names a live item (or an earlier item of the batch) are
    /// duplicates and are not written.
    pub(crate) fn add_items(&self, batch: &[Prepared]) -> Result<(Vec<(ItemId, bool)>, u64)> {
        let encoded: Vec<EncodedVectors> = batch
            .iter()
            .map(|p| EncodedVectors {
                vector: vector::to_bytes(&p.vector),
                q8: p
                    .store_int8
                    .then(|| QuantizedVector::quantize(&p.vector).to_bytes()),
                copies: vector::to_bytes(&p.copies),
            })
            .collect();
        let trees = (
            &self.items,
            &self.vectors,
            &self.vectors_q8,
            &self.copies,
            &self.thumbnails,
            &self.by_hash,
            &self.meta,
        );
        let result = trees.transaction(|(items, vectors, q8s, copies, thumbs, by_hash, meta)| {
            let read_u64 = |k: &[u8]| -> Result<u64, ConflictableTransactionError<CatalogError>> {
                Ok(meta.get(k)?.and_then(|v| id_of(&v)).unwrap_or(0))
            };
            let mut next_id = read_u64(KEY_NEXT_ID)?.max(1);
            let generation = read_u64(KEY_GENERATION)?;
            let mut in_batch: HashMap<&str, ItemId> = HashMap::new();
            let mut out = Vec::with_capacity(batch.len());
            for (p, encoded) in batch.iter().zip(&encoded) {
                let (vec_bytes, q8, copy_bytes) = (&encoded.vector, &encoded.q8, &encoded.copies);
                let hash = p.item.content_hash.as_str();
                if !hash.is_empty() {
                    if let Some(id) = in_batch.get(hash) {
                        out.push((*id, true));
                        continue;
                    }
                    if let Some(id) = by_hash.get(hash.as_bytes())?.and_then(|v| id_of(&v)) {
                        out.push((id, true));
                        continue;
                    }
                }
                let id = match p.item.id {
                    0 => {
                        next_id += 1;
                        next_id - 1
                    }
                    // A restored item keeps its id: already there (a resumed copy) is a
                    // duplicate, a different item there is refused.
                    kept => {
                        if let Some(there) = items.get(key(kept))? {
                            let there: Item = serde_json::from_slice(&there).map_err(|_| {
                                ConflictableTransactionError::Abort(CatalogError::corrupt(
                                    &self.dir,
                                    format!("items/{kept}"),
                                ))
                            })?;
                            if there.content_hash != hash || hash.is_empty() && there != p.item {
                                return Err(ConflictableTransactionError::Abort(
                                    CatalogError::InvalidArgument {
                                        what: format!(
                                            "item {kept} is already taken by a different item"
                                        ),
                                        fix: "copy into an empty catalogue".into(),
                                    },
                                ));
                            }
                            out.push((kept, true));
                            continue;
                        }
                        next_id = next_id.max(kept + 1);
                        kept
                    }
                };
                let mut item = p.item.clone();
                item.id = id;
                let json = serde_json::to_vec(&item).expect("Item serialises");
                items.insert(&key(id), json)?;
                vectors.insert(&key(id), vec_bytes.as_slice())?;
                if let Some(q) = q8 {
                    q8s.insert(&key(id), q.as_slice())?;
                }
                if !copy_bytes.is_empty() {
                    copies.insert(&key(id), copy_bytes.as_slice())?;
                }
                if !p.thumbnail.is_empty() {
                    thumbs.insert(&key(id), p.thumbnail.as_slice())?;
                }
                if !hash.is_empty() {
                    by_hash.insert(hash.as_bytes(), &key(id))?;
                    in_batch.insert(hash, id);
                }
                out.push((id, false));
            }
            let written = out.iter().any(|(_, dup)| !dup);
            let generation = if written { generation + 1 } else { generation };
            if let Some(p) = batch.iter().find(|p| p.copy_dim > 0) {
                if meta.get(KEY_COPY_DIM)?.is_none() {
                    meta.insert(KEY_COPY_DIM, &(p.copy_dim as u64).to_be_bytes())?;
                }
            }
            meta.insert(KEY_NEXT_ID, &next_id.to_be_bytes())?;
            meta.insert(KEY_GENERATION, &generation.to_be_bytes())?;
            Ok((out, generation))
        });
        let out = result.map_err(|e| self.tx_err(e))?;
        self.flush()?;
        Ok(out)
    }

    /// Tombstones a live item; returns its record and the new generation.
    pub(crate) fn tombstone(&self, id: ItemId) -> Result<(Item, u64)> {
        let item = self.item(id)?.ok_or(CatalogError::UnknownItem { id })?;
        let trees = (&self.tombstones, &self.by_hash, &self.meta);
        let generation = trees
            .transaction(|(tombstones, by_hash, meta)| {
                if tombstones.get(key(id))?.is_some() {
                    return Err(ConflictableTransactionError::Abort(
                        CatalogError::UnknownItem { id },
                    ));
                }
                tombstones.insert(&key(id), &now_ms().to_be_bytes())?;
                let hash = item.content_hash.as_bytes();
                if !hash.is_empty() && by_hash.get(hash)?.and_then(|v| id_of(&v)) == Some(id) {
                    by_hash.remove(hash)?;
                }
                Ok(bump_generation(meta)?)
            })
            .map_err(|e| self.tx_err(e))?;
        self.flush()?;
        Ok((item, generation))
    }

    /// Replaces labels and/or tags of a live item; returns the old and new records and the generation.
    pub(crate) fn update_item(&self, id: ItemId, update: &ItemUpdate) -> Result<(Item, Item, u64)> {
        if self.is_tombstoned(id)? {
            return Err(CatalogError::UnknownItem { id });
        }
        let old = self.item(id)?.ok_or(CatalogError::UnknownItem { id })?;
        let mut new = old.clone();
        if let Some(labels) = &update.labels {
            new.labels = labels.clone();
        }
        if let Some(tags) = &update.tags {
            new.tags = tags.clone();
        }
        let json = serde_json::to_vec(&new).expect("Item serialises");
        let generation = (&self.items, &self.meta)
            .transaction(|(items, meta)| {
                items.insert(&key(id), json.as_slice())?;
                Ok(bump_generation(meta)?)
            })
            .map_err(|e| self.tx_err(e))?;
        self.flush()?;
        Ok((old, new, generation))
    }

    /// The item record of `id` (live or tombstoned), if stored.
    pub(crate) fn item(&self, id: ItemId) -> Result<Option<Item>> {
        match self.items.get(key(id)).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(self.decode(&format!("items/{id}"), &v)?)),
            None => Ok(None),
        }
    }

    /// The stored f32 vector of `id`.
    pub(crate) fn vector(&self, id: ItemId) -> Result<Option<Vec<f32>>> {
        match self.vectors.get(key(id)).map_err(|e| self.err(e))? {
            Some(v) => vector::from_bytes(&v).map(Some).ok_or_else(|| {
                CatalogError::corrupt(&self.dir, format!("vectors/{id}: bad length"))
            }),
            None => Ok(None),
        }
    }

    /// The stored int8 copy of `id`'s vector, when the catalogue keeps one.
    pub(crate) fn quantized(&self, id: ItemId) -> Result<Option<QuantizedVector>> {
        let v = self.vectors_q8.get(key(id)).map_err(|e| self.err(e))?;
        Ok(v.and_then(|b| QuantizedVector::from_bytes(&b)))
    }

    /// The stored thumbnail of `id`.
    /// The copy descriptors of an item's views, back to back (`None`: it has none).
    pub(crate) fn copies(&self, id: ItemId) -> Result<Option<Vec<f32>>> {
        let v = self.copies.get(key(id)).map_err(|e| self.err(e))?;
        v.map(|b| {
            vector::from_bytes(&b)
                .ok_or_else(|| CatalogError::corrupt(&self.dir, format!("copies/{id}: bad length")))
        })
        .transpose()
    }

    /// The length of one stored copy descriptor: the first item's set over its view count is not
    /// known here, so the length is kept in `meta` when the first set is written.
    pub(crate) fn copy_dim(&self) -> Result<Option<usize>> {
        let v = self.meta.get(KEY_COPY_DIM).map_err(|e| self.err(e))?;
        Ok(v.and_then(|b| id_of(&b)).map(|d| d as usize))
    }

    /// The calibrated copy verdict, if one was stored.
    pub(crate) fn copy_verdict(&self) -> Result<Option<CopyVerdict>> {
        match self.meta.get(KEY_COPY_VERDICT).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(self.decode("meta/copy_verdict", &v)?)),
            None => Ok(None),
        }
    }

    /// Stores the calibrated copy verdict.
    pub(crate) fn set_copy_verdict(&self, verdict: &CopyVerdict) -> Result<()> {
        let json = serde_json::to_vec(verdict).expect("CopyVerdict serialises");
        self.meta
            .insert(KEY_COPY_VERDICT, json)
            .map_err(|e| self.err(e))?;
        self.flush()
    }

    /// Every stored copy descriptor set, by id (tombstoned items included).
    pub(crate) fn all_copies(&self) -> Result<Vec<(ItemId, Vec<f32>)>> {
        self.copies
            .iter()
            .map(|entry| {
                let (k, v) = entry.map_err(|e| self.err(e))?;
                let id = id_of(&k).unwrap_or(0);
                let copies = vector::from_bytes(&v).ok_or_else(|| {
                    CatalogError::corrupt(&self.dir, format!("copies/{id}: bad length"))
                })?;
                Ok((id, copies))
            })
            .collect()
    }

    pub(crate) fn thumbnail(&self, id: ItemId) -> Result<Option<Vec<u8>>> {
        let v = self.thumbnails.get(key(id)).map_err(|e| self.err(e))?;
        Ok(v.map(|b| b.to_vec()))
    }

    /// Whether `id` is tombstoned.
    pub(crate) fn is_tombstoned(&self, id: ItemId) -> Result<bool> {
        self.tombstones
            .contains_key(key(id))
            .map_err(|e| self.err(e))
    }

    /// Ids of all tombstoned items.
    pub(crate) fn tombstoned_ids(&self) -> Result<Vec<ItemId>> {
        self.tombstones
            .iter()
            .keys()
            .map(|k| Ok(id_of(&k.map_err(|e| self.err(e))?).unwrap_or(0)))
            .collect()
    }

    /// All live item records, in id order.
    pub(crate) fn live_items(&self) -> Result<Vec<Item>> {
        let mut out = Vec::new();
        for kv in self.items.iter() {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            let id = id_of(&k).unwrap_or(0);
            if !self.is_tombstoned(id)? {
                out.push(self.decode(&format!("items/{id}"), &v)?);
            }
        }
        Ok(out)
    }

    /// Number of item records (live and tombstoned).
    pub(crate) fn item_count(&self) -> usize {
        self.items.len()
    }

    /// Deletes every record of tombstoned items; returns how many were purged and the new generation.
    pub(crate) fn purge_tombstoned(&self) -> Result<(usize, u64)> {
        let ids = self.tombstoned_ids()?;
        let mut batch = sled::Batch::default();
        for id in &ids {
            batch.remove(&key(*id));
        }
        for tree in [
            &self.items,
            &self.vectors,
            &self.vectors_q8,
            &self.copies,
            &self.thumbnails,
            &self.popularity,
            &self.tombstones,
        ] {
            tree.apply_batch(batch.clone()).map_err(|e| self.err(e))?;
        }
        let generation = self.generation()? + 1;
        self.meta
            .insert(KEY_GENERATION, &generation.to_be_bytes())
            .map_err(|e| self.err(e))?;
        self.flush()?;
        Ok((ids.len(), generation))
    }

    /// Appends a user event, bumps the item's popularity for a user's first like of it, and drops
    /// the user's oldest events beyond [`MAX_EVENTS_PER_USER`].
    pub(crate) fn record_event(&self, user: &str, event: &Event) -> Result<()> {
        let seq = self.db.generate_id().map_err(|e| self.err(e))?;
        let mut prefix = user.as_bytes().to_vec();
        prefix.push(0);
        let mut k = prefix.clone();
        k.extend(event.at_ms.to_be_bytes());
        k.extend(seq.to_be_bytes());
        let mut like_key = prefix.clone();
        like_key.extend(key(event.item));
        let json = serde_json::to_vec(event).expect("Event serialises");
        let stored = (&self.events, &self.users, &self.likes, &self.popularity)
            .transaction(|(events, users, likes, popularity)| {
                events.insert(k.as_slice(), json.as_slice())?;
                let fresh = UserRecord {
                    first_seen_ms: event.at_ms,
                    last_seen_ms: event.at_ms,
                    events: 0,
                };
                let mut rec = match users.get(user.as_bytes())? {
                    Some(v) => serde_json::from_slice(&v).unwrap_or(fresh),
                    None => fresh,
                };
                rec.first_seen_ms = rec.first_seen_ms.min(event.at_ms);
                rec.last_seen_ms = rec.last_seen_ms.max(event.at_ms);
                rec.events += 1;
                let count = rec.events;
                let rec = serde_json::to_vec(&rec).expect("UserRecord serialises");
                users.insert(user.as_bytes(), rec)?;
                if event.kind == EventKind::Like
                    && likes.insert(like_key.as_slice(), &[])?.is_none()
                {
                    let n = popularity
                        .get(key(event.item))?
                        .and_then(|v| id_of(&v))
                        .unwrap_or(0);
                    popularity.insert(&key(event.item), &(n + 1).to_be_bytes())?;
                }
                Ok(count)
            })
            .map_err(|e: TransactionError<CatalogError>| self.tx_err(e))?;
        if stored > MAX_EVENTS_PER_USER as u64 {
            self.drop_oldest_events(user, &prefix)?;
        }
        self.flush()
    }

    /// Deletes `user`'s oldest events beyond [`MAX_EVENTS_PER_USER`] and records the new count.
    fn drop_oldest_events(&self, user: &str, prefix: &[u8]) -> Result<()> {
        let keys = self
            .events
            .scan_prefix(prefix)
            .keys()
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        let excess = keys.len().saturating_sub(MAX_EVENTS_PER_USER);
        let mut batch = sled::Batch::default();
        keys[..excess].iter().for_each(|k| batch.remove(k));
        self.events.apply_batch(batch).map_err(|e| self.err(e))?;
        let kept = (keys.len() - excess) as u64;
        self.users
            .fetch_and_update(user.as_bytes(), |v| {
                let v = v?;
                match serde_json::from_slice::<UserRecord>(v) {
                    Ok(mut rec) => {
                        rec.events = kept;
                        Some(serde_json::to_vec(&rec).expect("UserRecord serialises"))
                    }
                    Err(_) => Some(v.to_vec()),
                }
            })
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every user with events, by name.
    pub(crate) fn users(&self) -> Result<Vec<String>> {
        self.users
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k.map_err(|e| self.err(e))?).into_owned()))
            .collect()
    }

    /// A user's events in time order.
    pub(crate) fn events(&self, user: &str) -> Result<Vec<Event>> {
        let mut prefix = user.as_bytes().to_vec();
        prefix.push(0);
        self.events
            .scan_prefix(prefix)
            .values()
            .map(|v| self.decode("events", &v.map_err(|e| self.err(e))?))
            .collect()
    }

    /// Like counts per item (items never liked are absent).
    pub(crate) fn popularity(&self) -> Result<Vec<(ItemId, u64)>> {
        self.popularity
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(|e| self.err(e))?;
                Ok((id_of(&k).unwrap_or(0), id_of(&v).unwrap_or(0)))
            })
            .collect()
    }

    /// Enrolled characters and the sums of their few-shot vectors.
    pub(crate) fn enrolled(&self) -> Result<Vec<(String, VectorSum)>> {
        self.characters
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(|e| self.err(e))?;
                let name = String::from_utf8_lossy(&k).into_owned();
                let rec: EnrolledRecord = self.decode(&format!("characters/{name}"), &v)?;
                Ok((
                    name,
                    VectorSum {
                        sum: rec.sum,
                        count: rec.shots,
                    },
                ))
            })
            .collect()
    }

    /// Adds few-shot vectors to an enrolled character (creating it if needed); returns its new sum.
    pub(crate) fn enroll(&self, name: &str, shots: &VectorSum) -> Result<VectorSum> {
        let mut total = shots.clone();
        if let Some(v) = self
            .characters
            .get(name.as_bytes())
            .map_err(|e| self.err(e))?
        {
            let old: EnrolledRecord = self.decode(&format!("characters/{name}"), &v)?;
            total.merge(&VectorSum {
                sum: old.sum,
                count: old.shots,
            });
        }
        let rec = EnrolledRecord {
            sum: total.sum.clone(),
            shots: total.count,
            enrolled_at_ms: now_ms(),
        };
        let json = serde_json::to_vec(&rec).expect("EnrolledRecord serialises");
        self.characters
            .insert(name.as_bytes(), json)
            .map_err(|e| self.err(e))?;
        self.flush()?;
        Ok(total)
    }

    /// Starts a new vector set beside the current one (int8 copies kept when the current set has them).
    pub(crate) fn begin_vector_set(&self) -> Result<PendingVectorSet> {
        let n = self.u64_meta(KEY_VECTOR_SET)? + 1;
        let names = vector_tree_names(n);
        for name in &names {
            self.db
                .drop_tree(name.as_bytes())
                .map_err(|e| self.err(e))?;
        }
        let [v, q, c] = names.map(|name| self.db.open_tree(name).map_err(|e| self.err(e)));
        Ok(PendingVectorSet {
            n,
            vectors: v?,
            vectors_q8: q?,
            copies: c?,
            int8: !self.vectors_q8.is_empty(),
            copy_dim: None,
        })
    }

    /// Writes normalised vectors into a pending set (flushed; not visible until switched to).
    pub(crate) fn write_pending(
        &self,
        set: &mut PendingVectorSet,
        vectors: &[(ItemId, ItemVectors)],
    ) -> Result<()> {
        let [mut f32s, mut q8s, mut copies] = [(); 3].map(|_| sled::Batch::default());
        for (
            id,
            ItemVectors {
                vector: v,
                copies: c,
            },
        ) in vectors
        {
            f32s.insert(&key(*id), vector::to_bytes(v));
            if set.int8 {
                q8s.insert(&key(*id), QuantizedVector::quantize(v).to_bytes());
            }
            if let Some(first) = c.first() {
                set.copy_dim.get_or_insert(first.len());
                copies.insert(&key(*id), vector::to_bytes(&c.concat()));
            }
        }
        set.vectors.apply_batch(f32s).map_err(|e| self.err(e))?;
        set.vectors_q8.apply_batch(q8s).map_err(|e| self.err(e))?;
        set.copies.apply_batch(copies).map_err(|e| self.err(e))?;
        self.flush()
    }

    /// Makes `set` current together with `model`, in one transaction: items listed in `drop` (no
    /// vector in the new set) are tombstoned, enrolled few-shot sums and the open-set threshold
    /// (both meaningful only for the old model) are deleted, and the generation is bumped. The old
    /// set is dropped afterwards. Returns the new generation.
    pub(crate) fn switch_vector_set(
        &mut self,
        set: PendingVectorSet,
        model: &ModelTag,
        drop: &[Item],
    ) -> Result<u64> {
        let model_json = serde_json::to_vec(model).expect("ModelTag serialises");
        let enrolled: Vec<sled::IVec> = self
            .characters
            .iter()
            .keys()
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))?;
        let trees = (
            &self.meta,
            &self.tombstones,
            &self.by_hash,
            &self.characters,
        );
        let generation = trees
            .transaction(|(meta, tombstones, by_hash, characters)| {
                for item in drop {
                    tombstones.insert(&key(item.id), &now_ms().to_be_bytes())?;
                    let hash = item.content_hash.as_bytes();
                    if !hash.is_empty()
                        && by_hash.get(hash)?.and_then(|v| id_of(&v)) == Some(item.id)
                    {
                        by_hash.remove(hash)?;
                    }
                }
                for name in &enrolled {
                    characters.remove(name)?;
                }
                meta.remove(KEY_THRESHOLD)?;
                meta.remove(KEY_COPY_VERDICT)?;
                match set.copy_dim {
                    Some(d) => meta.insert(KEY_COPY_DIM, &(d as u64).to_be_bytes())?,
                    None => meta.remove(KEY_COPY_DIM)?,
                };
                meta.insert(KEY_MODEL, model_json.as_slice())?;
                meta.insert(KEY_VECTOR_SET, &set.n.to_be_bytes())?;
                Ok(bump_generation(meta)?)
            })
            .map_err(|e| self.tx_err(e))?;
        self.flush()?;
        let old = [
            self.vectors.name(),
            self.vectors_q8.name(),
            self.copies.name(),
        ];
        self.vectors = set.vectors;
        self.vectors_q8 = set.vectors_q8;
        self.copies = set.copies;
        for name in old {
            self.db.drop_tree(&name).map_err(|e| self.err(e))?;
        }
        Ok(generation)
    }

    /// The id of the live item with content hash `hash`, if any.
    pub(crate) fn live_by_hash(&self, hash: &str) -> Result<Option<ItemId>> {
        let v = self.by_hash.get(hash.as_bytes()).map_err(|e| self.err(e))?;
        Ok(v.and_then(|b| id_of(&b)))
    }

    /// The calibrated open-set threshold, if one was stored.
    pub(crate) fn threshold(&self) -> Result<Option<f32>> {
        let v = self.meta.get(KEY_THRESHOLD).map_err(|e| self.err(e))?;
        Ok(v.and_then(|b| Some(f32::from_le_bytes(b.as_ref().try_into().ok()?))))
    }

    /// Stores the open-set threshold.
    pub(crate) fn set_threshold(&self, t: f32) -> Result<()> {
        self.meta
            .insert(KEY_THRESHOLD, &t.to_le_bytes())
            .map_err(|e| self.err(e))?;
        self.flush()
    }

    /// Where the catalogue's model was loaded from, as recorded by [`Store::set_model_source`].
    pub(crate) fn model_source(&self) -> Result<Option<String>> {
        let v = self.meta.get(KEY_MODEL_SOURCE).map_err(|e| self.err(e))?;
        Ok(v.and_then(|b| String::from_utf8(b.to_vec()).ok()))
    }

    /// Records where the catalogue's model was loaded from (a checkpoint path).
    pub(crate) fn set_model_source(&self, source: &str) -> Result<()> {
        self.meta
            .insert(KEY_MODEL_SOURCE, source.as_bytes())
            .map_err(|e| self.err(e))?;
        self.flush()
    }

    /// Bytes sled occupies on disk.
    pub(crate) fn size_on_disk(&self) -> Result<u64> {
        self.db.size_on_disk().map_err(|e| self.err(e))
    }
}
