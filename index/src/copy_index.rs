//! The copy graph: a second HNSW graph over the copy descriptors of every catalogued picture's
//! views (see `animelens_models::copies::views`), searched by copyright review (`audit`).
//!
//! Its point ids are `item id · VIEW_STRIDE + view`, so one graph holds all views and a hit names
//! its item. It is derived from the store's `copies` tree like the main graph, but built on the
//! first copy search rather than at open (a catalogue that is never audited pays nothing), kept in
//! step by writers once built, and dropped by anything that rebuilds the main graph (rebuild,
//! compaction, re-embedding), to be built again on the next search. Removed items are filtered by
//! the catalogue's live set, as in the main graph.
//!
//! Concurrency: the graph sits behind a mutex taken only to build it, to insert into it and to
//! clone its `Arc`; searches run on the clone without the lock. A writer that publishes while the
//! graph is being built waits for the build; if the build already read its item from the store,
//! the writer's insert adds the same views again, which searches fold into one hit per item.

use crate::ann::{Ann, GraphPrecision, HnswParams};
use crate::error::{CatalogError, Result};
use crate::record::ItemId;
use std::collections::{HashMap, HashSet};

/// Point ids leave room for this many views per item.
pub const VIEW_STRIDE: u64 = 8;

/// The copy graph and the length of one descriptor.
pub(crate) struct CopyIndex {
    ann: Ann,
    dim: usize,
}

/// One item's best match with a copy query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CopyMatch {
    /// The item.
    pub id: ItemId,
    /// Cosine similarity of the best (query view, item view) pair.
    pub similarity: f32,
    /// Which of the item's views matched best (0 = the whole picture).
    pub view: usize,
    /// Which of the query's views matched it (0 = as uploaded, 1 = mirrored).
    pub query_view: usize,
}

impl CopyIndex {
    /// Builds the graph over `entries` (item id, its views' descriptors back to back) whose
    /// descriptors have `dim` values each. Always over f32 vectors, whatever precision `params`
    /// asks the catalogue's graph for: the copy graph's similarities are the verdict's scores,
    /// compared with a calibrated threshold, and nothing rescores them.
    pub(crate) fn build(params: &HnswParams, dim: usize, entries: &[(ItemId, Vec<f32>)]) -> Self {
        let points: Vec<(Vec<f32>, ItemId)> = entries
            .iter()
            .flat_map(|(id, copies)| points_of(*id, copies, dim))
            .collect();
        let params = HnswParams {
            precision: Some(GraphPrecision::F32),
            ..*params
        };
        Self {
            ann: Ann::build(&params, &points, false),
            dim,
        }
    }

    /// Length of one descriptor.
    pub(crate) fn dim(&self) -> usize {
        self.dim
    }

    /// Adds one item's views.
    pub(crate) fn insert(&self, id: ItemId, copies: &[f32]) {
        let points = points_of(id, copies, self.dim);
        self.ann.insert_many(&points);
    }

    /// The `k` live items most similar to any of the query views, best first.
    pub(crate) fn search(
        &self,
        queries: &[Vec<f32>],
        k: usize,
        ef: usize,
        live: &HashSet<ItemId>,
    ) -> Vec<CopyMatch> {
        let is_live = |point: &usize| live.contains(&(*point as u64 / VIEW_STRIDE));
        let wide = points_for(k);
        let hits = queries
            .iter()
            .enumerate()
            .filter(|(_, q)| q.len() == self.dim)
            .flat_map(|(query_view, q)| {
                self.ann
                    .search(q, wide, ef.max(wide), &is_live, None)
                    .into_iter()
                    .map(move |(point, similarity)| (query_view, point, similarity))
            });
        best_per_item(hits, k)
    }
}

/// How many view points a search must fetch for `k` distinct items (every view of an item may
/// come before the next item).
pub(crate) fn points_for(k: usize) -> usize {
    k * VIEW_STRIDE as usize
}

/// Folds `(query view, point id, similarity)` hits of every query view into the `k` best items,
/// each with its best pair of views, best first (ties by id).
pub(crate) fn best_per_item(
    hits: impl IntoIterator<Item = (usize, u64, f32)>,
    k: usize,
) -> Vec<CopyMatch> {
    let mut best: HashMap<ItemId, CopyMatch> = HashMap::new();
    for (query_view, point, similarity) in hits {
        let found = CopyMatch {
            id: point / VIEW_STRIDE,
            similarity,
            view: (point % VIEW_STRIDE) as usize,
            query_view,
        };
        best.entry(found.id)
            .and_modify(|m| {
                if similarity > m.similarity {
                    *m = found;
                }
            })
            .or_insert(found);
    }
    let mut out: Vec<CopyMatch> = best.into_values().collect();
    out.sort_by(|a, b| b.similarity.total_cmp(&a.similarity).then(a.id.cmp(&b.id)));
    out.truncate(k);
    out
}

/// Validates the copy descriptors of a new item against the length the catalogue stores
/// (`stored`, if any): all of one length, at most [`VIEW_STRIDE`] views, finite. Returns them
/// back to back.
pub(crate) fn checked_copies(copies: &[Vec<f32>], stored: Option<usize>) -> Result<Vec<f32>> {
    let Some(first) = copies.first() else {
        return Ok(Vec::new());
    };
    let dim = first.len();
    if dim == 0
        || copies.len() > VIEW_STRIDE as usize
        || copies
            .iter()
            .any(|c| c.len() != dim || c.iter().any(|v| !v.is_finite()))
        || stored.is_some_and(|d| d != dim)
    {
        return Err(CatalogError::invalid(
            format!(
                "copy descriptors of {} views with lengths {:?} (the catalogue stores {})",
                copies.len(),
                copies.iter().map(Vec::len).collect::<Vec<_>>(),
                stored.map_or("none yet".to_string(), |d| format!("length {d}")),
            ),
            format!("give at most {VIEW_STRIDE} finite descriptors of the catalogue's length"),
        ));
    }
    Ok(copies.concat())
}

/// Refuses query views whose length is not the stored descriptors' `dim`.
pub(crate) fn check_query_views(views: &[Vec<f32>], dim: usize) -> Result<()> {
    match views.iter().find(|q| q.len() != dim) {
        None => Ok(()),
        Some(q) => Err(CatalogError::invalid(
            format!(
                "a copy descriptor of length {} (the catalogue stores {dim})",
                q.len()
            ),
            "describe uploads with the model the catalogue was built with",
        )),
    }
}

/// The point ids of all views an item may have.
pub(crate) fn view_points(id: ItemId) -> impl Iterator<Item = u64> {
    (0..VIEW_STRIDE).map(move |view| id * VIEW_STRIDE + view)
}

/// The graph points of one item's views.
pub(crate) fn points_of(id: ItemId, copies: &[f32], dim: usize) -> Vec<(Vec<f32>, ItemId)> {
    view_points(id)
        .zip(copies.chunks_exact(dim.max(1)))
        .map(|(point, d)| (d.to_vec(), point))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::normalise;

    fn descriptor(seed: u64) -> Vec<f32> {
        let v: Vec<f32> = (0..16)
            .map(|j| ((seed * 31 + j * 17) % 23) as f32 - 11.0)
            .collect();
        normalise(&v).unwrap()
    }

    #[test]
    fn a_view_of_an_item_finds_the_item_once_and_removed_items_are_skipped() {
        // Items 1..=40, three views each.
        let entries: Vec<(ItemId, Vec<f32>)> = (1..=40u64)
            .map(|id| (id, (0..3).flat_map(|v| descriptor(id * 3 + v)).collect()))
            .collect();
        // A catalogue with an int8 graph: the copy graph stays f32, so similarities are exact.
        let int8 = HnswParams {
            precision: Some(GraphPrecision::Int8),
            ..HnswParams::default()
        };
        let index = CopyIndex::build(&int8, 16, &entries);
        assert_eq!(index.ann.precision(), GraphPrecision::F32);
        let mut live: HashSet<ItemId> = (1..=40).collect();
        let query = descriptor(7 * 3 + 2);
        let hits = index.search(std::slice::from_ref(&query), 5, 64, &live);
        assert_eq!(hits[0].id, 7);
        assert_eq!(hits[0].view, 2);
        assert!((hits[0].similarity - 1.0).abs() < 1e-5);
        let ids: HashSet<ItemId> = hits.iter().map(|h| h.id).collect();
        assert_eq!(ids.len(), hits.len(), "one hit per item");
        live.remove(&7);
        let hits = index.search(&[query], 5, 64, &live);
        assert!(hits.iter().all(|h| h.id != 7));
    }
}
