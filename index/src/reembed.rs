//! Re-embedding a catalogue with a new model: every live item's vector is recomputed by the
//! caller (from the item's stored source), written to a new vector set beside the current one,
//! and the new set and model tag become current in one sled transaction. Until that switch the
//! catalogue answers with the old model; a crash leaves it on the old model, never half-switched.
//! The caller gets each item with its stored thumbnail, a fallback when the source is gone (e.g.
//! uploads); items it still cannot re-embed are tombstoned at the switch, since their old vectors
//! are not comparable with the new model's.

use crate::catalog::Catalog;
use crate::error::{CatalogError, Result};
use crate::record::{Item, ItemId, ItemVectors, ModelTag};
use crate::store::Store;
use crate::vector;
use std::path::Path;

/// A live item handed to the re-embedding callback.
#[derive(Debug, Clone)]
pub struct ReembedItem {
    /// The item's record (its `source` names the original image).
    pub item: Item,
    /// The stored JPEG thumbnail, if any (a lower-resolution fallback for a missing source).
    pub thumbnail: Option<Vec<u8>>,
}

/// Refuses an embedding callback's answer that is not one result per item.
pub(crate) fn check_one_result_per_item(results: usize, items: usize) -> Result<()> {
    if results == items {
        return Ok(());
    }
    Err(CatalogError::invalid(
        format!("the embedding callback returned {results} results for {items} items"),
        "return exactly one result per item, in order",
    ))
}

/// What [`Catalog::reembed`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct ReembedReport {
    /// The model the catalogue was built with before.
    pub previous: ModelTag,
    /// Items re-embedded with the new model.
    pub reembedded: usize,
    /// Items that could not be re-embedded and were removed (tombstoned), with the reason.
    pub removed: Vec<(Item, String)>,
    /// Few-shot enrolments (vector sums without images) deleted because they belong to the old model.
    pub enrolments_dropped: usize,
}

impl Catalog {
    /// Re-embeds the catalogue in folder `dir` with `model`. `embed` is called with batches of at
    /// most `batch` live items and returns, per item in order, the new embedding or why it could
    /// not be computed. The catalogue must not be open elsewhere (the store lock is taken).
    /// Enrolled few-shot sums and the calibrated open-set threshold are deleted (they belong to the
    /// old model): enroll with images (`enroll_items`) so that enrolments survive re-embedding.
    pub fn reembed<F>(
        dir: &Path,
        model: &ModelTag,
        batch: usize,
        mut embed: F,
    ) -> Result<ReembedReport>
    where
        F: FnMut(&[ReembedItem]) -> Vec<std::result::Result<ItemVectors, String>>,
    {
        if !Store::path_in(dir).exists() {
            return Err(CatalogError::NotInitialised {
                dir: dir.to_path_buf(),
            });
        }
        if model.dim == 0 {
            return Err(CatalogError::invalid(
                "embedding dimension 0",
                "pass the model's embedding dimension (1024 for GoogLeNet)",
            ));
        }
        let mut store = Store::open(dir)?;
        let previous = store.model()?.ok_or_else(|| CatalogError::NotInitialised {
            dir: dir.to_path_buf(),
        })?;
        let items = store.live_items()?;
        let mut pending = store.begin_vector_set()?;
        let mut removed = Vec::new();
        let mut reembedded = 0usize;
        for chunk in items.chunks(batch.max(1)) {
            let inputs = chunk
                .iter()
                .map(|item| {
                    Ok(ReembedItem {
                        thumbnail: store.thumbnail(item.id)?,
                        item: item.clone(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let results = embed(&inputs);
            check_one_result_per_item(results.len(), chunk.len())?;
            let mut ok: Vec<(ItemId, ItemVectors)> = Vec::with_capacity(chunk.len());
            for (item, result) in chunk.iter().zip(results) {
                match result.and_then(|r| {
                    let vector =
                        vector::normalised(&r.vector, model.dim).map_err(|e| e.to_string())?;
                    Ok(ItemVectors { vector, ..r })
                }) {
                    Ok(vectors) => ok.push((item.id, vectors)),
                    Err(reason) => removed.push((item.clone(), reason)),
                }
            }
            reembedded += ok.len();
            store.write_pending(&mut pending, &ok)?;
        }
        let enrolments_dropped = store.enrolled()?.len();
        let dropped: Vec<Item> = removed.iter().map(|(i, _)| i.clone()).collect();
        let generation = store.switch_vector_set(pending, model, &dropped)?;
        tracing::info!(
            reembedded,
            removed = removed.len(),
            generation,
            from = %previous.fingerprint,
            to = %model.fingerprint,
            "switched the catalogue to the new model"
        );
        Ok(ReembedReport {
            previous,
            reembedded,
            removed,
            enrolments_dropped,
        })
    }

    /// The id of the live item whose content hash is `hash` (lets callers skip embedding exact
    /// duplicates before adding them).
    pub fn find_by_hash(&self, hash: &str) -> Result<Option<ItemId>> {
        if hash.is_empty() {
            return Ok(None);
        }
        let id = self.store()?.live_by_hash(hash)?;
        Ok(id.filter(|id| self.read_state().live.contains(id)))
    }
}

#[cfg(test)]
mod tests {
    use crate::{Catalog, CatalogLogic, Filter, ItemVectors, ModelTag, NewItem, OpenOptions};

    fn tag(fp: &str, dim: usize) -> ModelTag {
        ModelTag {
            fingerprint: fp.into(),
            dim,
        }
    }

    fn item(i: usize, v: Vec<f32>) -> NewItem {
        NewItem {
            source: format!("img{i}.png"),
            labels: [("character".to_string(), format!("c{}", i % 2))].into(),
            content_hash: format!("h{i}"),
            vector: v,
            ..NewItem::default()
        }
    }

    #[test]
    fn reembed_switches_model_and_vectors_and_drops_failures() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("cat");
        {
            let cat = Catalog::open(&db, OpenOptions::new(tag("old", 3))).unwrap();
            let items = (0..5).map(|i| item(i, vec![1.0, i as f32, 0.0])).collect();
            cat.add_batch(items).unwrap();
            cat.enroll("ghost", &[vec![0.0, 0.0, 1.0]]).unwrap();
            cat.close().unwrap();
        }
        // New 2-d model: item "img3.png" cannot be re-embedded.
        let report = Catalog::reembed(&db, &tag("new", 2), 2, |batch| {
            batch
                .iter()
                .map(|i| match i.item.source.as_str() {
                    "img3.png" => Err("source file is gone".to_string()),
                    _ => Ok(ItemVectors {
                        vector: vec![i.item.id as f32, 1.0],
                        copies: vec![vec![1.0, i.item.id as f32, 0.5]],
                    }),
                })
                .collect()
        })
        .unwrap();
        assert_eq!(report.previous.fingerprint, "old");
        assert_eq!((report.reembedded, report.removed.len()), (4, 1));
        assert_eq!(report.enrolments_dropped, 1);
        assert!(matches!(
            Catalog::open(&db, OpenOptions::new(tag("old", 3))),
            Err(crate::CatalogError::ModelMismatch { .. })
        ));
        let cat = Catalog::open(&db, OpenOptions::new(tag("new", 2))).unwrap();
        assert_eq!(cat.stats().unwrap().live, 4);
        assert!(cat.check_consistency().unwrap().is_consistent());
        for id in [1u64, 2, 3, 5] {
            let v = cat.vector(id).unwrap().unwrap();
            assert_eq!(v.len(), 2);
            // Exact search: this checks the switched vectors, not the graph's recall on four
            // nearly collinear 2-d points (where the HNSW walk once missed the query itself).
            assert_eq!(cat.exact_search(&v, 1, &Filter::any()).unwrap()[0].id, id);
        }
        assert!(cat.get(4).unwrap().is_none(), "the failed item is removed");
        // The new copy descriptors came with the switch.
        assert_eq!(cat.copy_dim().unwrap(), Some(3));
        assert_eq!(cat.copies(5).unwrap(), vec![vec![1.0, 5.0, 0.5]]);
        assert!(cat.similar_characters("ghost", 3).is_err());
        // The removed item's hash is free again; the others are still duplicates.
        assert_eq!(cat.find_by_hash("h3").unwrap(), None);
        assert_eq!(cat.find_by_hash("h0").unwrap(), Some(1));
    }

    #[test]
    fn interrupted_reembed_leaves_the_old_model() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("cat");
        {
            let cat = Catalog::open(&db, OpenOptions::new(tag("old", 3))).unwrap();
            cat.add_batch(vec![
                item(0, vec![1.0, 0.0, 0.0]),
                item(1, vec![0.0, 1.0, 0.0]),
            ])
            .unwrap();
        }
        let wrong = Catalog::reembed(&db, &tag("new", 3), 1, |_| Vec::new());
        assert!(wrong.is_err());
        let cat = Catalog::open(&db, OpenOptions::new(tag("old", 3))).unwrap();
        assert_eq!(cat.stats().unwrap().live, 2);
        assert_eq!(cat.vector(2).unwrap().unwrap(), vec![0.0, 1.0, 0.0]);
    }
}
