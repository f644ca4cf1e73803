//! Benchmarks of the catalogue on synthetic or real vectors, and retrieval-quality metrics.
//!
//! [`run_on`] builds a catalogue of given normalised vectors in a scratch folder and measures
//! ingest, graph build (open without a dump), reload (open with a dump), bytes per item on disk
//! and on the heap, exact brute-force QPS, and recall@10 / QPS for several `ef` (one query
//! thread, and optionally more, through [`Catalog::search_with_ef`], item records included,
//! after one untimed warm-up pass); [`run`] does so on seeded, clustered vectors, and
//! [`jittered_copies`] grows real embeddings into a larger set. [`retrieval_quality`] measures how
//! well embeddings retrieve same-class items (leave-one-out recall@1 and mAP@10, exact), and
//! [`catalog_retrieval_quality`] the same through a catalogue's own search (HNSW, filters), so
//! that learned and baseline descriptors go through one code path. [`run_storage`] measures any
//! [`Storage`] backend the same way (ingest rate, recall@10 against exact answers and QPS, with
//! and without a label filter), so that the embedded catalogue and Milvus are compared side by side.

use crate::ann::HnswParams;
use crate::catalog::{Catalog, OpenOptions};
use crate::error::{CatalogError, Result};
use crate::filter::Filter;
use crate::logic::CatalogLogic;
use crate::record::{ItemId, ModelTag, NewItem};
use crate::storage::Storage;
use crate::vector::{dot, normalise};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Instant;

/// What to benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchConfig {
    /// Items in the catalogue.
    pub n: usize,
    /// Embedding dimension.
    pub dim: usize,
    /// Number of clusters the items are drawn around.
    pub clusters: usize,
    /// Norm of the noise added to a cluster centre (1.0 gives cosine ≈ 0.7 to the centre).
    pub spread: f32,
    /// Number of query vectors (drawn like the items, not in the catalogue).
    pub queries: usize,
    /// Random seed.
    pub seed: u64,
    /// Search `ef` values to measure.
    pub efs: Vec<usize>,
    /// Query thread counts to measure QPS with.
    pub query_threads: Vec<usize>,
    /// Graph parameters.
    pub hnsw: HnswParams,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            n: 20_000,
            dim: 1024,
            clusters: 200,
            spread: 1.0,
            queries: 200,
            seed: 42,
            efs: vec![16, 32, 64, 128],
            query_threads: vec![1],
            hnsw: HnswParams::default(),
        }
    }
}

/// Recall and speed at one `ef`.
#[derive(Debug, Clone, PartialEq)]
pub struct EfRow {
    /// The search `ef`.
    pub ef: usize,
    /// Mean fraction of the exact top 10 found (by id).
    pub recall_at_10: f32,
    /// Mean fraction of the 10 hits at least as similar as the exact 10th neighbour (minus
    /// 1e-5): unlike `recall_at_10`, not penalised for returning one of several equally near
    /// neighbours instead of another.
    pub recall_at_10_by_distance: f32,
    /// Queries per second with one query thread.
    pub qps: f32,
    /// Queries per second with each further thread count asked for: `(threads, QPS)`, the
    /// queries shared out among that many threads searching at once.
    pub qps_threaded: Vec<(usize, f32)>,
    /// Queries per second of the graph walk alone, one thread: the same walk (as many candidates
    /// as the catalogue asks for) without live-set filter, rescoring or item records; `qps`
    /// against this is what the catalogue adds to hnsw_rs.
    pub graph_qps: f32,
}

/// Benchmark results.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// What the vectors are (e.g. "100000 synthetic clustered vectors").
    pub data: String,
    /// Items in the catalogue.
    pub n: usize,
    /// Embedding dimension.
    pub dim: usize,
    /// Graph parameters.
    pub hnsw: HnswParams,
    /// Queries per measurement.
    pub queries: usize,
    /// Seconds to add every item (sled writes and incremental graph insertion).
    pub ingest_secs: f32,
    /// Seconds to open without a dump (store scan and parallel graph build).
    pub build_secs: f32,
    /// Seconds to open with a current dump.
    pub reload_secs: f32,
    /// Bytes on disk per item (store and dump).
    pub bytes_per_item: f32,
    /// Heap bytes per item the reopened catalogue holds (graph, postings, live set), from glibc's
    /// allocator statistics before and after the open; `None` where they are not available.
    pub heap_bytes_per_item: Option<f32>,
    /// Exact brute-force queries per second over in-memory vectors, one thread.
    pub exact_qps: f32,
    /// One row per `ef`.
    pub rows: Vec<EfRow>,
}

impl BenchReport {
    /// The report as a markdown table plus a summary line.
    pub fn to_markdown(&self) -> String {
        let heap = self
            .heap_bytes_per_item
            .map_or_else(|| "n/a".to_string(), |b| format!("{b:.0}"));
        let threads: Vec<usize> = self
            .rows
            .first()
            .map(|r| r.qps_threaded.iter().map(|&(t, _)| t).collect())
            .unwrap_or_default();
        let mut out = format!(
            "{}: n = {} × {}-d, M = {}, ef_construction = {}, graph vectors {}, {} queries\n\n\
             ingest {:.1} s · build (open without dump) {:.1} s · reload (open with dump) {:.2} s · \
             {:.0} bytes/item on disk · {heap} heap bytes/item after reload · exact brute force {:.0} QPS\n\n\
             | ef | recall@10 | recall@10 by distance | graph walk alone, QPS (1 thread) | QPS (1 thread) |",
            self.data, self.n, self.dim, self.hnsw.max_nb_connection, self.hnsw.ef_construction,
            self.hnsw.precision.unwrap_or_default(), self.queries, self.ingest_secs, self.build_secs, self.reload_secs,
            self.bytes_per_item, self.exact_qps,
        );
        threads
            .iter()
            .for_each(|t| out.push_str(&format!(" QPS ({t} threads) |")));
        out.push_str("\n|---:|---:|---:|---:|---:|");
        threads.iter().for_each(|_| out.push_str("---:|"));
        out.push('\n');
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {:.4} | {:.4} | {:.0} | {:.0} |",
                r.ef, r.recall_at_10, r.recall_at_10_by_distance, r.graph_qps, r.qps
            ));
            r.qps_threaded
                .iter()
                .for_each(|(_, q)| out.push_str(&format!(" {q:.0} |")));
            out.push('\n');
        }
        out
    }

    /// One CSV line per (`ef`, query threads): `engine,precision,m,ef_construction,ef,threads,recall_at_10,qps`
    /// (no header), the format `index/benches/reference/ann_peers.py` writes for hnswlib and faiss.
    pub fn to_csv(&self, engine: &str) -> String {
        let mut out = String::new();
        for r in &self.rows {
            for (threads, qps) in std::iter::once((1, r.qps)).chain(r.qps_threaded.iter().copied())
            {
                out.push_str(&format!(
                    "{engine},{},{},{},{},{threads},{:.4},{qps:.1}\n",
                    self.hnsw.precision.unwrap_or_default(),
                    self.hnsw.max_nb_connection,
                    self.hnsw.ef_construction,
                    r.ef,
                    r.recall_at_10
                ));
            }
        }
        out
    }
}

/// Bytes the allocator has handed out and not taken back (glibc's `mallinfo2`, every arena).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap_in_use() -> Option<u64> {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let info = unsafe { libc::mallinfo2() };
    Some(info.uordblks as u64 + info.hblkhd as u64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap_in_use() -> Option<u64> {
    None
}

/// QPS of `search` over `queries` shared out among `threads` threads searching at once.
fn threaded_qps(
    queries: &[Vec<f32>],
    threads: usize,
    search: impl Fn(&[f32]) -> Result<()> + Sync,
) -> Result<f32> {
    let started = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|t| {
                let search = &search;
                scope.spawn(move || {
                    queries
                        .iter()
                        .skip(t)
                        .step_by(threads.max(1))
                        .try_for_each(|q| search(q))
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("search thread panicked"))
    })?;
    Ok(queries.len() as f32 / started.elapsed().as_secs_f32())
}

/// Standard normal sample (Box–Muller).
fn gaussian(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Three seeded, normalised 16-d copy-descriptor views of picture `i` (the whole picture first),
/// for tests of copy review on any storage.
pub fn copy_views(i: u64) -> Vec<Vec<f32>> {
    (0..3u64)
        .map(|view| {
            let mut state = (i * 8 + view + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let v: Vec<f32> = (0..16)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1);
                    (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect();
            crate::vector::normalise(&v).expect("a non-zero vector")
        })
        .collect()
}

/// `n` normalised vectors around `clusters` random centres (noise of norm ≈ `spread`), with the
/// cluster index of each. Deterministic in `seed`.
pub fn clustered_vectors(
    n: usize,
    dim: usize,
    clusters: usize,
    spread: f32,
    seed: u64,
) -> (Vec<Vec<f32>>, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let random_unit = |rng: &mut StdRng| loop {
        let v: Vec<f32> = (0..dim).map(|_| gaussian(rng)).collect();
        if let Some(u) = normalise(&v) {
            return u;
        }
    };
    let centres: Vec<Vec<f32>> = (0..clusters.max(1))
        .map(|_| random_unit(&mut rng))
        .collect();
    let mut labels = Vec::with_capacity(n);
    let vectors = (0..n)
        .map(|_| {
            let c = rng.random_range(0..centres.len());
            labels.push(c);
            let noise = random_unit(&mut rng);
            let v: Vec<f32> = centres[c]
                .iter()
                .zip(&noise)
                .map(|(a, b)| a + spread * b)
                .collect();
            normalise(&v).unwrap_or_else(|| centres[c].clone())
        })
        .collect();
    (vectors, labels)
}

/// `n` normalised vectors drawn near `bases` (seeded): each picks a base at random and adds
/// Gaussian noise of norm ≈ `spread` (cosine ≈ 1/√(1 + spread²) to its base). Grows a few
/// thousand real embeddings into a benchmark set with their geometry (a catalogue holding many
/// near variants of each picture), since embedding 100,000 distinct images is not practical here.
pub fn jittered_copies(bases: &[Vec<f32>], n: usize, spread: f32, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let dim = bases.first().map_or(0, Vec::len);
    let scale = spread / (dim.max(1) as f32).sqrt();
    (0..n)
        .map(|_| {
            let base = &bases[rng.random_range(0..bases.len())];
            let v: Vec<f32> = base
                .iter()
                .map(|x| x + scale * gaussian(&mut rng))
                .collect();
            normalise(&v).unwrap_or_else(|| base.clone())
        })
        .collect()
}

/// The exact top `k` of `q` among `vectors`: (index, dot product), most similar first.
fn exact_top(q: &[f32], vectors: &[Vec<f32>], k: usize) -> Vec<(usize, f32)> {
    let mut scored: Vec<(usize, f32)> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| (i, dot(q, v)))
        .collect();
    let k = k.min(scored.len());
    if k == 0 {
        return Vec::new();
    }
    scored.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
    scored.truncate(k);
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    scored
}

/// The items and queries `config` describes (clustered, seeded) and a line saying what they are.
pub fn synthetic_set(config: &BenchConfig) -> (Vec<Vec<f32>>, Vec<Vec<f32>>, String) {
    let (mut items, _) = clustered_vectors(
        config.n + config.queries,
        config.dim,
        config.clusters,
        config.spread,
        config.seed,
    );
    let queries = items.split_off(config.n.min(items.len()));
    let data = format!(
        "synthetic ({} clusters, spread {}, seed {})",
        config.clusters, config.spread, config.seed
    );
    (items, queries, data)
}

/// Runs the benchmark on synthetic clustered vectors in `dir`, which must not exist yet or be
/// empty (it is left behind).
pub fn run(dir: &Path, config: &BenchConfig) -> Result<BenchReport> {
    let (items, queries, data) = synthetic_set(config);
    run_on(
        dir,
        &data,
        &items,
        &queries,
        config.hnsw,
        &config.efs,
        &config.query_threads,
    )
}

/// Adds `items` to `storage` in batches of 1,000 as `bench/<n>`, labelled by `labels(n)`; returns
/// their ids in order.
fn add_in_batches(
    storage: &dyn Storage,
    items: &[Vec<f32>],
    labels: impl Fn(usize) -> BTreeMap<String, String>,
) -> Result<Vec<ItemId>> {
    let mut ids = Vec::with_capacity(items.len());
    for (chunk_no, chunk) in items.chunks(1000).enumerate() {
        let batch = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let n = chunk_no * 1000 + i;
                NewItem {
                    source: format!("bench/{n}"),
                    labels: labels(n),
                    vector: v.clone(),
                    ..NewItem::default()
                }
            })
            .collect();
        ids.extend(storage.add_batch(batch)?.into_iter().map(|o| o.id));
    }
    Ok(ids)
}

/// Runs the benchmark on `items` (added to a fresh catalogue in `dir`, which must not exist yet
/// or be empty; it is left behind) with `queries` (not added), all of one dimension. QPS is
/// measured with one query thread, and with each other count in `query_threads`.
pub fn run_on(
    dir: &Path,
    data: &str,
    items: &[Vec<f32>],
    queries: &[Vec<f32>],
    hnsw: HnswParams,
    efs: &[usize],
    query_threads: &[usize],
) -> Result<BenchReport> {
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(CatalogError::invalid(
            format!("benchmark folder {} is not empty", dir.display()),
            "pass a new or empty scratch folder",
        ));
    }
    let dim = items.first().map_or(0, Vec::len);
    let mut options = OpenOptions::new(ModelTag {
        fingerprint: "bench".into(),
        dim,
    });
    options.hnsw = hnsw;
    options.save_index_on_close = false;

    let started = Instant::now();
    let cat = Catalog::open(dir, options.clone())?;
    let index_of = add_in_batches(&cat, items, |_| BTreeMap::new())?;
    let ingest_secs = started.elapsed().as_secs_f32();
    cat.save_index()?;
    let bytes_per_item = cat.stats()?.bytes_on_disk as f32 / items.len().max(1) as f32;
    drop(cat);

    let heap_before = heap_in_use();
    let started = Instant::now();
    let cat = Catalog::open(dir, options.clone())?;
    let reload_secs = started.elapsed().as_secs_f32();
    let heap_bytes_per_item = heap_before
        .zip(heap_in_use())
        .map(|(before, after)| after.saturating_sub(before) as f32 / items.len().max(1) as f32);

    let started = Instant::now();
    let truth: Vec<Vec<(usize, f32)>> = queries.iter().map(|q| exact_top(q, items, 10)).collect();
    let exact_qps = queries.len() as f32 / started.elapsed().as_secs_f32();

    // One untimed pass first, so that no row pays for a cold cache (the first to touch the store's
    // pages: an int8 graph rescores with vectors read from sled).
    for q in queries {
        cat.search_with_ef(q, 10, &Filter::any(), efs.first().copied().unwrap_or(64))?;
    }
    let mut rows = Vec::new();
    for &ef in efs {
        let started = Instant::now();
        let answers = queries
            .iter()
            .map(|q| cat.search_with_ef(q, 10, &Filter::any(), ef))
            .collect::<Result<Vec<_>>>()?;
        let secs = started.elapsed().as_secs_f32();
        let graph_qps = {
            let st = cat.read_state();
            let everything = |_: &usize| true;
            let walked = st.ann.precision().candidates(10);
            let started = Instant::now();
            for q in queries {
                std::hint::black_box(st.ann.search(q, walked, ef, &everything, Some(0)));
            }
            queries.len() as f32 / started.elapsed().as_secs_f32()
        };
        let (mut found, mut near_enough, mut wanted) = (0usize, 0usize, 0usize);
        for (hits, want) in answers.iter().zip(&truth) {
            let got: HashSet<ItemId> = hits.iter().map(|h| h.id).collect();
            found += want
                .iter()
                .filter(|&&(i, _)| got.contains(&index_of[i]))
                .count();
            // Similarity of the exact 10th neighbour.
            let bound = want.last().map_or(f32::MIN, |&(_, s)| s);
            near_enough += hits
                .iter()
                .filter(|h| h.score >= bound - 1e-5)
                .count()
                .min(want.len());
            wanted += want.len();
        }
        let qps_threaded = query_threads
            .iter()
            .filter(|&&t| t > 1)
            .map(|&t| {
                let search = |q: &[f32]| cat.search_with_ef(q, 10, &Filter::any(), ef).map(drop);
                Ok((t, threaded_qps(queries, t, search)?))
            })
            .collect::<Result<Vec<_>>>()?;
        rows.push(EfRow {
            ef,
            recall_at_10: found as f32 / wanted.max(1) as f32,
            recall_at_10_by_distance: near_enough as f32 / wanted.max(1) as f32,
            qps: queries.len() as f32 / secs,
            qps_threaded,
            graph_qps,
        });
    }
    drop(cat);

    let _ = std::fs::remove_dir_all(crate::dump::dump_dir(dir));
    let started = Instant::now();
    drop(Catalog::open(dir, options)?);
    let build_secs = started.elapsed().as_secs_f32();

    Ok(BenchReport {
        data: data.to_string(),
        n: items.len(),
        dim,
        hnsw,
        queries: queries.len(),
        ingest_secs,
        build_secs,
        reload_secs,
        bytes_per_item,
        heap_bytes_per_item,
        exact_qps,
        rows,
    })
}

/// Same-class retrieval quality of a set of embeddings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetrievalQuality {
    /// Queries scored (items whose class has at least one other member).
    pub queries: usize,
    /// Fraction of queries whose nearest other item has the same class.
    pub recall_at_1: f32,
    /// Mean average precision over the 10 nearest other items.
    pub map_at_10: f32,
}

/// Leave-one-out retrieval quality: every item queries all the others (exact cosine). AP@10 is
/// Σ precision@r over relevant ranks r ≤ 10, divided by min(10, number of same-class others).
pub fn retrieval_quality(vectors: &[Vec<f32>], labels: &[String]) -> RetrievalQuality {
    assert_eq!(vectors.len(), labels.len(), "one label per vector");
    let normed: Vec<Vec<f32>> = vectors
        .iter()
        .map(|v| normalise(v).unwrap_or_else(|| v.clone()))
        .collect();
    let mut class_size: BTreeMap<&str, usize> = BTreeMap::new();
    labels
        .iter()
        .for_each(|l| *class_size.entry(l).or_default() += 1);
    let per_query: Vec<(f32, f32)> = (0..normed.len())
        .into_par_iter()
        .filter(|&i| class_size[labels[i].as_str()] > 1)
        .map(|i| {
            let others: Vec<usize> = exact_top(&normed[i], &normed, 11)
                .into_iter()
                .map(|(j, _)| j)
                .filter(|&j| j != i)
                .take(10)
                .collect();
            let relevant = class_size[labels[i].as_str()] - 1;
            let (mut hits, mut ap) = (0usize, 0f32);
            for (rank, &j) in others.iter().enumerate() {
                if labels[j] == labels[i] {
                    hits += 1;
                    ap += hits as f32 / (rank + 1) as f32;
                }
            }
            let r1 = others.first().is_some_and(|&j| labels[j] == labels[i]);
            (f32::from(u8::from(r1)), ap / relevant.min(10) as f32)
        })
        .collect();
    let n = per_query.len().max(1) as f32;
    RetrievalQuality {
        queries: per_query.len(),
        recall_at_1: per_query.iter().map(|p| p.0).sum::<f32>() / n,
        map_at_10: per_query.iter().map(|p| p.1).sum::<f32>() / n,
    }
}

/// Leave-one-out retrieval quality through `cat`'s own search: every live item matching `filter`
/// with a label at `level` shared by another matching item queries its 10 nearest others
/// ([`Catalog::search_by_id`] within `filter`), scored as in [`retrieval_quality`].
pub fn catalog_retrieval_quality(
    cat: &Catalog,
    level: &str,
    filter: &Filter,
) -> Result<RetrievalQuality> {
    let ids = cat.candidate_ids(filter, &HashSet::new());
    let labelled: Vec<(ItemId, String)> = ids
        .iter()
        .map(|&id| {
            Ok(cat
                .get(id)?
                .and_then(|i| Some((id, i.labels.get(level)?.clone()))))
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    let mut class_size: BTreeMap<&str, usize> = BTreeMap::new();
    labelled
        .iter()
        .for_each(|(_, l)| *class_size.entry(l).or_default() += 1);
    let per_query = labelled
        .par_iter()
        .filter(|(_, l)| class_size[l.as_str()] > 1)
        .map(|(id, label)| {
            let hits = cat.search_by_id(*id, 10, filter)?;
            let relevant = class_size[label.as_str()] - 1;
            let same = |h: &crate::Hit| h.item.labels.get(level) == Some(label);
            let (mut found, mut ap) = (0usize, 0f32);
            for (rank, h) in hits.iter().enumerate() {
                if same(h) {
                    found += 1;
                    ap += found as f32 / (rank + 1) as f32;
                }
            }
            let r1 = hits.first().is_some_and(same);
            Ok((f32::from(u8::from(r1)), ap / relevant.min(10) as f32))
        })
        .collect::<Result<Vec<(f32, f32)>>>()?;
    let n = per_query.len().max(1) as f32;
    Ok(RetrievalQuality {
        queries: per_query.len(),
        recall_at_1: per_query.iter().map(|p| p.0).sum::<f32>() / n,
        map_at_10: per_query.iter().map(|p| p.1).sum::<f32>() / n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retrieval_quality_of_separated_and_mixed_classes() {
        let (vectors, clusters) = clustered_vectors(200, 32, 4, 0.3, 7);
        let labels: Vec<String> = clusters.iter().map(|c| format!("c{c}")).collect();
        let q = retrieval_quality(&vectors, &labels);
        assert_eq!(q.queries, 200);
        assert!(q.recall_at_1 > 0.99 && q.map_at_10 > 0.99, "{q:?}");
        let shuffled: Vec<String> = (0..200).map(|i| format!("c{}", i % 4)).collect();
        let q = retrieval_quality(&vectors, &shuffled);
        assert!(q.recall_at_1 < 0.5 && q.map_at_10 < 0.5, "{q:?}");
    }

    #[test]
    fn catalog_retrieval_quality_matches_exact_quality() {
        let dir = tempfile::tempdir().unwrap();
        let (vectors, clusters) = clustered_vectors(300, 32, 5, 0.8, 3);
        let labels: Vec<String> = clusters.iter().map(|c| format!("c{c}")).collect();
        let cat = Catalog::open(
            dir.path().join("cat"),
            OpenOptions::new(ModelTag {
                fingerprint: "t".into(),
                dim: 32,
            }),
        )
        .unwrap();
        let items = vectors
            .iter()
            .zip(&labels)
            .enumerate()
            .map(|(i, (v, l))| NewItem {
                source: format!("{i}"),
                labels: [("character".to_string(), l.clone())].into(),
                tags: vec![if i % 2 == 0 { "even" } else { "odd" }.to_string()],
                vector: v.clone(),
                ..NewItem::default()
            })
            .collect();
        cat.add_batch(items).unwrap();
        let exact = retrieval_quality(&vectors, &labels);
        let via = catalog_retrieval_quality(&cat, "character", &Filter::any()).unwrap();
        assert_eq!(via.queries, exact.queries);
        assert!(
            (via.recall_at_1 - exact.recall_at_1).abs() < 0.02,
            "{via:?} {exact:?}"
        );
        assert!(
            (via.map_at_10 - exact.map_at_10).abs() < 0.02,
            "{via:?} {exact:?}"
        );
        let even =
            catalog_retrieval_quality(&cat, "character", &Filter::any().tag("even")).unwrap();
        assert_eq!(even.queries, 150);
    }

    #[test]
    fn small_bench_reports_high_recall() {
        let dir = tempfile::tempdir().unwrap();
        let config = BenchConfig {
            n: 1500,
            dim: 64,
            clusters: 30,
            queries: 50,
            efs: vec![16, 128],
            query_threads: vec![1, 2],
            ..BenchConfig::default()
        };
        let report = run(&dir.path().join("bench"), &config).unwrap();
        assert_eq!(report.rows.len(), 2);
        assert!(report
            .rows
            .iter()
            .all(|r| r.qps_threaded.len() == 1 && r.qps_threaded[0].1 > 0.0));
        let csv = report.to_csv("animelens");
        assert_eq!(csv.lines().count(), 4, "{csv}");
        assert!(csv.starts_with("animelens,f32,16,200,16,1,"), "{csv}");
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert!(
            report.heap_bytes_per_item.is_some_and(|b| b > 64.0),
            "{report:?}"
        );
        assert!(
            report.rows[1].recall_at_10 >= 0.95,
            "{}",
            report.to_markdown()
        );
        assert!(report.to_markdown().contains("| 128 |"));
        assert!(report.bytes_per_item > 64.0 * 4.0);
    }

    #[test]
    fn jittered_copies_stay_near_their_bases() {
        let (bases, _) = clustered_vectors(5, 256, 5, 1.0, 3);
        let copies = jittered_copies(&bases, 50, 0.35, 9);
        assert_eq!(copies.len(), 50);
        for c in &copies {
            assert!((dot(c, c) - 1.0).abs() < 1e-4);
            let best = bases.iter().map(|b| dot(b, c)).fold(f32::MIN, f32::max);
            // 1/√(1 + 0.35²) ≈ 0.944, give or take the noise's own spread.
            assert!((0.90..0.98).contains(&best), "{best}");
        }
        assert_ne!(copies, jittered_copies(&bases, 50, 0.35, 10));
    }

    /// With every vector stored 15 times, the exact top 10 is any 10 of 15 equal copies: recall
    /// by id is largely a matter of luck, recall by distance is not.
    #[test]
    fn recall_by_distance_does_not_penalise_equally_near_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let (distinct, _) = clustered_vectors(40, 32, 4, 0.5, 7);
        let items: Vec<Vec<f32>> = distinct
            .iter()
            .flat_map(|v| std::iter::repeat_n(v.clone(), 15))
            .collect();
        let queries = &distinct[..20];
        let report = run_on(
            &dir.path().join("bench"),
            "duplicates",
            &items,
            queries,
            HnswParams::default(),
            &[64],
            &[1],
        )
        .unwrap();
        let row = &report.rows[0];
        // Measured: 0.605 by id, 0.95 by distance (the copies also make the graph itself
        // harder to navigate, hence not 1.0).
        assert!(row.recall_at_10_by_distance > 0.85, "{row:?}");
        assert!(
            row.recall_at_10_by_distance > row.recall_at_10 + 0.15,
            "{row:?}"
        );
    }
}

/// One backend's figures on one set of vectors ([`run_storage`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StorageBenchReport {
    /// The backend measured.
    pub backend: &'static str,
    /// Items added.
    pub n: usize,
    /// Items added per second (batches of 1000, durable when each returns).
    pub ingest_per_sec: f32,
    /// Rows per (`ef`, filtered or not).
    pub rows: Vec<StorageBenchRow>,
}

/// Recall and speed at one `ef`, with or without the filter.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageBenchRow {
    /// The search `ef`.
    pub ef: usize,
    /// Whether the queries carried the label filter (one character of [`FILTER_CLASSES`]).
    pub filtered: bool,
    /// Mean fraction of the exact top 10 (among the items the filter lets through) found.
    pub recall_at_10: f32,
    /// `(threads, queries per second)` for each thread count asked for.
    pub qps: Vec<(usize, f32)>,
}

/// Items of the storage benchmark are labelled `character = c<i mod FILTER_CLASSES>`; the
/// filtered queries ask for `c0`, so the filter lets 1 in FILTER_CLASSES items through.
pub const FILTER_CLASSES: usize = 50;

impl StorageBenchReport {
    /// The report as markdown rows `| backend | ef | filter | recall@10 | QPS… |` (no header).
    pub fn to_markdown_rows(&self) -> String {
        self.rows
            .iter()
            .map(|r| {
                let qps: Vec<String> = r.qps.iter().map(|(_, q)| format!("{q:.0}")).collect();
                format!(
                    "| {} | {} | {} | {:.4} | {} |\n",
                    self.backend,
                    r.ef,
                    if r.filtered {
                        format!("character = c0 (1/{FILTER_CLASSES})")
                    } else {
                        "none".to_string()
                    },
                    r.recall_at_10,
                    qps.join(" | ")
                )
            })
            .collect()
    }
}

/// Adds `items` to the empty `storage` and measures its filtered nearest-neighbour search with
/// `queries` against exact answers, at each `ef`, with each count of `query_threads`.
pub fn run_storage(
    storage: &dyn Storage,
    items: &[Vec<f32>],
    queries: &[Vec<f32>],
    efs: &[usize],
    query_threads: &[usize],
) -> Result<StorageBenchReport> {
    let started = Instant::now();
    let index_of = add_in_batches(storage, items, |n| {
        BTreeMap::from([(
            crate::PRIMARY_LEVEL.to_string(),
            format!("c{}", n % FILTER_CLASSES),
        )])
    })?;
    storage.settle()?;
    let ingest_per_sec = items.len() as f32 / started.elapsed().as_secs_f32();
    tracing::info!(backend = storage.backend_name(), ingest_per_sec, "ingested");
    let in_c0: Vec<Vec<f32>> = items.iter().step_by(FILTER_CLASSES).cloned().collect();
    let c0_ids: Vec<ItemId> = index_of.iter().step_by(FILTER_CLASSES).copied().collect();
    let none = HashSet::new();
    let mut rows = Vec::new();
    for filtered in [false, true] {
        let (filter, pool, ids): (Filter, &[Vec<f32>], &[ItemId]) = if filtered {
            (
                Filter::any().label(crate::PRIMARY_LEVEL, "c0"),
                &in_c0,
                &c0_ids,
            )
        } else {
            (Filter::any(), items, &index_of)
        };
        let truth: Vec<HashSet<ItemId>> = queries
            .par_iter()
            .map(|q| {
                exact_top(q, pool, 10)
                    .into_iter()
                    .map(|(i, _)| ids[i])
                    .collect()
            })
            .collect();
        for &ef in efs {
            // Untimed pass: the recall, and warm caches for the timed ones.
            let mut found = 0usize;
            for (q, want) in queries.iter().zip(&truth) {
                let got = storage.nearest(q, 10, &filter, &none, ef)?;
                found += got.iter().filter(|(id, _)| want.contains(id)).count();
            }
            let wanted: usize = truth.iter().map(HashSet::len).sum();
            let qps = query_threads
                .iter()
                .map(|&t| {
                    let search = |q: &[f32]| storage.nearest(q, 10, &filter, &none, ef).map(drop);
                    Ok((t, threaded_qps(queries, t, search)?))
                })
                .collect::<Result<Vec<_>>>()?;
            tracing::info!(
                backend = storage.backend_name(),
                ef,
                filtered,
                ?qps,
                "measured"
            );
            rows.push(StorageBenchRow {
                ef,
                filtered,
                recall_at_10: found as f32 / wanted.max(1) as f32,
                qps,
            });
        }
    }
    Ok(StorageBenchReport {
        backend: storage.backend_name(),
        n: items.len(),
        ingest_per_sec,
        rows,
    })
}
