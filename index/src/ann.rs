//! The derived approximate-nearest-neighbour graph: an hnsw_rs `Hnsw<f32, DistDot>` over the
//! catalogue's normalised vectors (dot distance = 1 − cosine; `simdeez_f` makes it SIMD). The graph
//! is never the source of truth: it is built from sled, or reloaded from a dump (see [`crate::dump`]).

use crate::record::ItemId;
use hnsw_rs::prelude::{DistDot, FilterT, Hnsw};
use indicatif::{ProgressBar, ProgressStyle};

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
        }
    }
}

/// The HNSW graph. `'static` because a graph reloaded from a dump borrows its loader, which
/// [`crate::dump`] leaks on purpose (see there).
pub(crate) struct Ann {
    hnsw: Hnsw<'static, f32, DistDot>,
}

impl Ann {
    /// Wraps a graph reloaded from a dump.
    pub(crate) fn from_hnsw(hnsw: Hnsw<'static, f32, DistDot>) -> Ann {
        Ann { hnsw }
    }

    /// An empty graph sized for about `capacity` points.
    pub(crate) fn new(params: &HnswParams, capacity: usize) -> Ann {
        assert!(
            params.max_nb_connection <= MAX_CONNECTIONS,
            "validated by OpenOptions"
        );
        Ann {
            hnsw: Hnsw::new(
                params.max_nb_connection,
                capacity.max(1024),
                MAX_LAYER,
                params.ef_construction,
                DistDot,
            ),
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
        self.hnsw.insert_slice((v, id as usize));
    }

    /// Inserts many points in parallel (rayon).
    pub(crate) fn insert_many(&self, points: &[(Vec<f32>, ItemId)]) {
        let refs: Vec<(&Vec<f32>, usize)> =
            points.iter().map(|(v, id)| (v, *id as usize)).collect();
        self.hnsw.parallel_insert(&refs);
    }

    /// The `k` nearest points accepted by `filter`, as `(id, cosine)` in decreasing cosine order.
    /// May return fewer than `k` under a selective filter.
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
        let to_hits = |found: Vec<hnsw_rs::prelude::Neighbour>| -> Vec<(ItemId, f32)> {
            found
                .into_iter()
                .filter(|n| filter.hnsw_filter(&n.d_id))
                .map(|n| (n.d_id as ItemId, 1.0 - n.distance))
                .take(k)
                .collect()
        };
        if let Some(rejected) = rejected_hint.filter(|r| k + r <= 4 * ef) {
            let wide = k + rejected;
            let hits = to_hits(self.hnsw.search(query, wide, ef.max(wide)));
            if hits.len() == k || rejected == 0 {
                return hits;
            }
        }
        to_hits(self.hnsw.search_filter(query, k, ef, Some(filter)))
    }

    /// Number of points in the graph (live and tombstoned).
    pub(crate) fn len(&self) -> usize {
        self.hnsw.get_nb_point()
    }

    /// Ids of every point in the graph.
    pub(crate) fn ids(&self) -> Vec<ItemId> {
        if self.len() == 0 {
            return Vec::new(); // hnsw_rs's point iterator panics on an empty graph
        }
        self.hnsw
            .get_point_indexation()
            .into_iter()
            .map(|p| p.get_origin_id() as ItemId)
            .collect()
    }

    /// The hnsw_rs graph, for dumping.
    pub(crate) fn hnsw(&self) -> &Hnsw<'static, f32, DistDot> {
        &self.hnsw
    }
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
        let ann = Ann::build(&HnswParams::default(), &points, false);
        assert_eq!(ann.len(), 200);
        let all = |_: &usize| true;
        let hits = ann.search(&points[5].0, 3, 64, &all, Some(0));
        assert!((hits[0].1 - 1.0).abs() < 1e-5);
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
