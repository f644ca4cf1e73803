//! The derived approximate-nearest-neighbour graph over the catalogue's normalised vectors: an
//! hnsw_rs `Hnsw<f32, DistDot>` (dot distance = 1 − cosine; `simdeez_f` makes it SIMD), or, with
//! [`GraphPrecision::Int8`], an `Hnsw<i8, ScaledInt8Dot>` over int8 copies of them (a quarter of the
//! vector bytes; see [`crate::int8_points`]) whose candidates the catalogue rescores exactly. The
//! graph is never the source of truth: it is built from sled, or reloaded from a dump (see
//! [`crate::dump`]).

use crate::int8_points::{self, ScaledInt8Dot};
use crate::record::ItemId;
use hnsw_rs::prelude::{DistDot, Distance, FilterT, Hnsw, Neighbour};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Number of layers hnsw_rs may use (its own maximum).
const MAX_LAYER: usize = 16;
/// hnsw_rs terminates the process above this many connections; we refuse earlier.
pub const MAX_CONNECTIONS: usize = 256;

/// HNSW construction and search parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    /// Links per node and layer (M; layer 0 gets 2·M). At most [`MAX_CONNECTIONS`].
    pub max_nb_connection: usize,
    /// Candidate list size while building.
    pub ef_construction: usize,
    /// Candidate list size while searching (raised to k when k is larger).
    pub ef_search: usize,
    /// What the graph stores of each vector; `None` (the default): what the catalogue's saved
    /// graph stores, f32 when it has none — so that a command opening a catalogue a service
    /// runs with int8 vectors keeps them instead of rebuilding.
    pub precision: Option<GraphPrecision>,
}

/// What the search graph stores of each vector. The store always keeps the exact f32 vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GraphPrecision {
    /// The f32 vector: the graph's scores are the answer.
    #[default]
    F32,
    /// An int8 copy (per-vector scale): the graph proposes candidates, the store's f32 vectors
    /// score them.
    Int8,
}

impl GraphPrecision {
    /// How many graph candidates a top-`k` search rescores: twice `k`, at least `k + 10`.
    pub(crate) fn candidates(self, k: usize) -> usize {
        match self {
            GraphPrecision::F32 => k,
            GraphPrecision::Int8 => (2 * k).max(k + 10),
        }
    }
}

impl fmt::Display for GraphPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GraphPrecision::F32 => "f32",
            GraphPrecision::Int8 => "int8",
        })
    }
}

impl FromStr for GraphPrecision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(GraphPrecision::F32),
            "int8" => Ok(GraphPrecision::Int8),
            other => Err(format!(
                "unknown graph precision {other:?}: use f32 or int8"
            )),
        }
    }
}

impl Default for HnswParams {
    /// M = 16, ef_construction = 200, ef_search = 64. Measured with `crate::bench` (20,000 clustered
    /// 1024-d vectors, 2 busy cores): recall@10 0.970 / 0.997 / 1.000 / 1.000 at ef 16 / 32 / 64 / 128,
    /// 2,525 / 1,768 / 1,113 / 570 QPS on one thread; ef = 64 leaves margin for real embeddings,
    /// which cluster less cleanly than the synthetic ones.
    fn default() -> Self {
        HnswParams {
            max_nb_connection: 16,
            ef_construction: 200,
            ef_search: 64,
            precision: None,
        }
    }
}

/// The HNSW graph. `'static` because a graph reloaded from a dump borrows its loader, which
/// [`crate::dump`] leaks on purpose (see there).
pub(crate) enum Ann {
    /// Points are the f32 vectors.
    F32(Hnsw<'static, f32, DistDot>),
    /// Points are [`int8_points::encode`]d copies.
    Int8(Hnsw<'static, i8, ScaledInt8Dot>),
}

impl Ann {
    /// An empty graph sized for about `capacity` points.
    pub(crate) fn new(params: &HnswParams, capacity: usize) -> Ann {
        assert!(
            params.max_nb_connection <= MAX_CONNECTIONS,
            "validated by OpenOptions"
        );
        let (m, capacity, ef) = (
            params.max_nb_connection,
            capacity.max(1024),
            params.ef_construction,
        );
        match params.precision.unwrap_or_default() {
            GraphPrecision::F32 => Ann::F32(Hnsw::new(m, capacity, MAX_LAYER, ef, DistDot)),
            GraphPrecision::Int8 => Ann::Int8(Hnsw::new(m, capacity, MAX_LAYER, ef, ScaledInt8Dot)),
        }
    }

    /// What the graph stores of each vector.
    pub(crate) fn precision(&self) -> GraphPrecision {
        match self {
            Ann::F32(_) => GraphPrecision::F32,
            Ann::Int8(_) => GraphPrecision::Int8,
        }
    }

    /// Builds a graph over `points` with parallel insertion, showing a progress bar when asked.
    pub(crate) fn build(params: &HnswParams, points: &[(Vec<f32>, ItemId)], progress: bool) -> Ann {
        let ann = Ann::new(params, points.len());
        let bar = if progress && points.len() >= 1000 {
            let bar = ProgressBar::new(points.len() as u64);
            bar.set_style(
                ProgressStyle::with_template("indexing {bar:40} {pos}/{len} items, eta {eta}")
                    .expect("valid template"),
            );
            bar
        } else {
            ProgressBar::hidden()
        };
        for chunk in points.chunks(2048) {
            ann.insert_many(chunk);
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        ann
    }

    /// Inserts one point (safe while other threads search).
    pub(crate) fn insert(&self, v: &[f32], id: ItemId) {
        match self {
            Ann::F32(h) => h.insert_slice((v, id as usize)),
            Ann::Int8(h) => h.insert_slice((&int8_points::encode(v), id as usize)),
        }
    }

    /// Inserts many points in parallel (rayon).
    pub(crate) fn insert_many(&self, points: &[(Vec<f32>, ItemId)]) {
        match self {
            Ann::F32(h) => parallel_insert(h, points),
            Ann::Int8(h) => {
                let encoded: Vec<(Vec<i8>, ItemId)> = points
                    .iter()
                    .map(|(v, id)| (int8_points::encode(v), *id))
                    .collect();
                parallel_insert(h, &encoded);
            }
        }
    }

    /// The `k` nearest points accepted by `filter`, as `(id, cosine)` in decreasing cosine order
    /// (approximate cosines for an int8 graph). May return fewer than `k` under a selective filter.
    ///
    /// hnsw_rs checks the filter during the graph walk but then gives up its early stop, so a
    /// filtered walk visits many more nodes (measured ~10× slower). When few rejected points
    /// (`rejected_hint`: tombstones plus exclusions) can be in the way, an unfiltered walk for
    /// `k + rejected_hint` points, filtered afterwards, is tried first.
    pub(crate) fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: &dyn FilterT,
        rejected_hint: Option<usize>,
    ) -> Vec<(ItemId, f32)> {
        let ef = ef.max(k);
        let to_hits = |found: Vec<Neighbour>| -> Vec<(ItemId, f32)> {
            found
                .into_iter()
                .filter(|n| filter.hnsw_filter(&n.d_id))
                .map(|n| (n.d_id as ItemId, 1.0 - n.distance))
                .take(k)
                .collect()
        };
        let encoded = match self {
            Ann::F32(_) => Vec::new(),
            Ann::Int8(_) => int8_points::encode(query),
        };
        let walk = |k: usize, ef: usize, filter: Option<&dyn FilterT>| match (self, filter) {
            (Ann::F32(h), None) => h.search(query, k, ef),
            (Ann::F32(h), Some(_)) => h.search_filter(query, k, ef, filter),
            (Ann::Int8(h), None) => h.search(&encoded, k, ef),
            (Ann::Int8(h), Some(_)) => h.search_filter(&encoded, k, ef, filter),
        };
        if let Some(rejected) = rejected_hint.filter(|r| k + r <= 4 * ef) {
            let wide = k + rejected;
            let hits = to_hits(walk(wide, ef.max(wide), None));
            if hits.len() == k || rejected == 0 {
                return hits;
            }
        }
        to_hits(walk(k, ef, Some(filter)))
    }

    /// Number of points in the graph (live and tombstoned).
    pub(crate) fn len(&self) -> usize {
        match self {
            Ann::F32(h) => h.get_nb_point(),
            Ann::Int8(h) => h.get_nb_point(),
        }
    }

    /// Ids of every point in the graph.
    pub(crate) fn ids(&self) -> Vec<ItemId> {
        if self.len() == 0 {
            return Vec::new(); // hnsw_rs's point iterator panics on an empty graph
        }
        match self {
            Ann::F32(h) => origin_ids(h),
            Ann::Int8(h) => origin_ids(h),
        }
    }
}

/// Inserts `points` into `hnsw` in parallel (rayon), whatever its point type.
///
/// Into an empty graph the first point goes in alone: hnsw_rs stores a point that finds no entry
/// point as the entry candidate without linking it, so two threads starting on an empty graph
/// each store one unlinked point, and the one that does not become the entry point is never
/// reached again (seen as a catalogue item its own vector could not find after a rebuild).
fn parallel_insert<T, D>(hnsw: &Hnsw<'static, T, D>, points: &[(Vec<T>, ItemId)])
where
    T: Clone + Send + Sync,
    D: Distance<T> + Send + Sync,
{
    let mut refs: Vec<(&Vec<T>, usize)> = points.iter().map(|(v, id)| (v, *id as usize)).collect();
    if hnsw.get_nb_point() == 0 && !refs.is_empty() {
        let (first, id) = refs.remove(0);
        hnsw.insert_slice((first, id));
    }
    hnsw.parallel_insert(&refs);
}

/// Ids of every point of non-empty `hnsw`, whatever its point type.
fn origin_ids<T, D>(hnsw: &Hnsw<'static, T, D>) -> Vec<ItemId>
where
    T: Clone + Send + Sync,
    D: Distance<T> + Send + Sync,
{
    hnsw.get_point_indexation()
        .into_iter()
        .map(|p| p.get_origin_id() as ItemId)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::normalise;

    #[test]
    fn finds_itself_and_respects_filter() {
        let points: Vec<(Vec<f32>, ItemId)> = (0..200u64)
            .map(|i| {
                let v: Vec<f32> = (0..16)
                    .map(|j| ((i * 7 + j * 13) % 17) as f32 - 8.0)
                    .collect();
                (normalise(&v).unwrap(), i + 1)
            })
            .collect();
        for precision in [GraphPrecision::F32, GraphPrecision::Int8] {
            let params = HnswParams {
                precision: Some(precision),
                ..HnswParams::default()
            };
            let ann = Ann::build(&params, &points, false);
            assert_eq!(ann.precision(), precision);
            assert_eq!(ann.len(), 200);
            let all = |_: &usize| true;
            let hits = ann.search(&points[5].0, 3, 64, &all, Some(0));
            assert!((hits[0].1 - 1.0).abs() < 1e-2, "{precision}");
            let even = |id: &usize| id.is_multiple_of(2);
            assert!(ann
                .search(&points[5].0, 10, 64, &even, None)
                .iter()
                .all(|(id, _)| id.is_multiple_of(2)));
            let mut ids = ann.ids();
            ids.sort();
            assert_eq!(ids, (1..=200).collect::<Vec<_>>());
        }
    }
}
