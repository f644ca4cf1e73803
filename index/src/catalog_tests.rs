//! Tests of the catalogue as a whole: store/index agreement, duplicates, tombstones, filters and the
//! exact fallback, dump reload (current, stale, damaged), open errors, characters, recommendations,
//! feeds, concurrency, and a property test against exact search.

use crate::bench::{clustered_vectors, copy_views};
use crate::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

const DIM: usize = 32;

fn model() -> ModelTag {
    ModelTag {
        fingerprint: "fp-test".into(),
        dim: DIM,
    }
}

fn open(dir: &Path) -> Catalog {
    Catalog::open(dir, OpenOptions::new(model())).unwrap()
}

fn new_item(v: &[f32], character: &str, hash: &str) -> NewItem {
    NewItem {
        source: format!("{character}/{hash}.png"),
        labels: BTreeMap::from([
            ("character".to_string(), character.to_string()),
            ("work".to_string(), format!("work-of-{character}")),
        ]),
        tags: vec![],
        width: 64,
        height: 64,
        content_hash: hash.into(),
        thumbnail: vec![0xFF, 0xD8],
        vector: v.to_vec(),
        copies: vec![],
        frame: None,
    }
}

/// Writes an item to sled only, as a write whose caller saw an error may have done: the
/// derived state (graph, live set) does not know it. Returns the store's (id, duplicate) pairs.
fn write_to_store_only(cat: &Catalog, v: &[f32], source: &str, hash: &str) -> Vec<(ItemId, bool)> {
    let item = crate::store::Prepared {
        item: Item {
            id: 0,
            source: source.into(),
            labels: BTreeMap::new(),
            tags: vec![],
            width: 1,
            height: 1,
            content_hash: hash.into(),
            added_at_ms: 0,
            frame: None,
        },
        vector: crate::vector::normalise(v).unwrap(),
        store_int8: false,
        thumbnail: vec![],
        copies: vec![],
        copy_dim: 0,
    };
    cat.store().unwrap().add_items(&[item]).unwrap().0
}

/// `n` items in `clusters` clusters; character = "c<cluster>", hash = "h<i>".
fn fill(
    cat: &Catalog,
    n: usize,
    clusters: usize,
    seed: u64,
) -> (Vec<ItemId>, Vec<Vec<f32>>, Vec<usize>) {
    let (vectors, labels) = clustered_vectors(n, DIM, clusters, 0.6, seed);
    let items = vectors
        .iter()
        .zip(&labels)
        .enumerate()
        .map(|(i, (v, c))| new_item(v, &format!("c{c}"), &format!("h{seed}-{i}")))
        .collect();
    let ids = cat
        .add_batch(items)
        .unwrap()
        .into_iter()
        .map(|o| o.id)
        .collect();
    (ids, vectors, labels)
}

fn hit_ids(hits: &[Hit]) -> Vec<ItemId> {
    hits.iter().map(|h| h.id).collect()
}

#[test]
fn catalog_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Catalog>();
    let _: Option<Arc<dyn Storage>> = None;
}

#[test]
fn add_search_and_store_index_agree() {
    let dir = tempfile::tempdir().unwrap();
    let cat = open(dir.path());
    let (ids, vectors, _) = fill(&cat, 300, 10, 1);
    let hits = cat.search(&vectors[7], 5, &Filter::any()).unwrap();
    assert_eq!(hits[0].id, ids[7]);
    assert!((hits[0].score - 1.0).abs() < 1e-5);
    assert_eq!(
        hits[0].item.source,
        "c".to_string() + &hits[0].item.labels["character"][1..] + "/h1-7.png"
    );
    assert_eq!(cat.thumbnail(ids[7]).unwrap(), Some(vec![0xFF, 0xD8]));
    assert!(cat.check_consistency().unwrap().is_consistent());
    let stats = cat.stats().unwrap();
    assert_eq!(
        (stats.items, stats.live, stats.tombstoned, stats.dim),
        (300, 300, 0, DIM)
    );
    assert_eq!(stats.fingerprint, "fp-test");
    assert!(stats.bytes_on_disk > 0 && stats.generation == 1);
    let by_id = cat.search_by_id(ids[7], 5, &Filter::any()).unwrap();
    assert!(!hit_ids(&by_id).contains(&ids[7]) && by_id.len() == 5);
    assert!(matches!(
        cat.search(&[1.0; 3], 5, &Filter::any()),
        Err(CatalogError::BadVector { .. })
    ));
}

#[test]
fn duplicates_are_detected_by_content_hash() {
    let dir = tempfile::tempdir().unwrap();
    let cat = open(dir.path());
    let (vs, _) = clustered_vectors(3, DIM, 1, 0.5, 2);
    let first = cat.add(new_item(&vs[0], "a", "same")).unwrap();
    assert!(!first.duplicate);
    let again = cat.add(new_item(&vs[1], "a", "same")).unwrap();
    assert_eq!(
        again,
        AddOutcome {
            id: first.id,
            duplicate: true
        }
    );
    let batch = cat
        .add_batch(vec![new_item(&vs[2], "b", "x"), new_item(&vs[2], "b", "x")])
        .unwrap();
    assert!(
        !batch[0].duplicate
            && batch[1]
                == AddOutcome {
                    id: batch[0].id,
                    duplicate: true
                }
    );
    assert_eq!(cat.stats().unwrap().live, 2);
    cat.remove(first.id).unwrap();
    let readded = cat.add(new_item(&vs[0], "a", "same")).unwrap();
    assert!(!readded.duplicate && readded.id != first.id);
}

#[test]
fn tombstones_hide_items_and_compaction_purges_them() {
    let dir = tempfile::tempdir().unwrap();
    let cat = open(dir.path());
    let (ids, vectors, _) = fill(&cat, 200, 5, 3);
    cat.remove(ids[0]).unwrap();
    assert!(matches!(
        cat.remove(ids[0]),
        Err(CatalogError::UnknownItem { .. })
    ));
    assert!(matches!(
        cat.remove(999_999),
        Err(CatalogError::UnknownItem { .. })
    ));
    for k in [1, 10, 199] {
        let hits = cat.search(&vectors[0], k, &Filter::any()).unwrap();
        assert!(!hit_ids(&hits).contains(&ids[0]));
        assert_eq!(hits.len(), k.min(199));
    }
    assert!(cat.get(ids[0]).unwrap().is_none());
    let stats = cat.stats().unwrap();
    assert_eq!(
        (
            stats.items,
            stats.live,
            stats.tombstoned,
            stats.indexed_points
        ),
        (200, 199, 1, 200)
    );
    let report = cat.compact().unwrap();
    assert_eq!(
        report,
        CompactReport {
            purged: 1,
            live: 199
        }
    );
    let stats = cat.stats().unwrap();
    assert_eq!(
        (stats.items, stats.tombstoned, stats.indexed_points),
        (199, 0, 199)
    );
    assert!(cat.check_consistency().unwrap().is_consistent());
    assert_eq!(cat.rebuild().unwrap(), 199);
}

#[test]
fn filters_use_postings_and_fall_back_to_exact_search() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = OpenOptions::new(model());
    options.exact_threshold = 0; // force the filtered graph walk, so the short-result fallback runs
    options.hnsw.ef_search = 16;
    let cat = Catalog::open(dir.path(), options).unwrap();
    let (ids, vectors, labels) = fill(&cat, 600, 20, 4);
    cat.update(
        ids[1],
        &ItemUpdate {
            tags: Some(vec!["rare".into()]),
            ..ItemUpdate::default()
        },
    )
    .unwrap();
    let rare = cat
        .search(&vectors[0], 10, &Filter::any().tag("rare"))
        .unwrap();
    assert_eq!(hit_ids(&rare), vec![ids[1]]);
    let c = format!("c{}", labels[0]);
    let members: HashSet<ItemId> = ids
        .iter()
        .zip(&labels)
        .filter(|(_, l)| format!("c{l}") == c)
        .map(|(i, _)| *i)
        .collect();
    // A query far from the cluster: the graph walk alone finds few members; k of them must come back.
    let far = &vectors[labels.iter().position(|l| *l != labels[0]).unwrap()];
    let filter = Filter::any()
        .label("character", &c)
        .label("work", format!("work-of-{c}"));
    let k = members.len().min(25);
    let hits = cat.search(far, k, &filter).unwrap();
    assert_eq!(hits.len(), k);
    assert!(hits
        .iter()
        .all(|h| members.contains(&h.id) && filter.matches(&h.item)));
    assert_eq!(
        hit_ids(&hits),
        hit_ids(&cat.exact_search(far, k, &filter).unwrap())
    );
    assert!(cat
        .search(far, 5, &Filter::any().label("character", "nobody"))
        .unwrap()
        .is_empty());
}

#[test]
fn small_filters_are_searched_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cat = open(dir.path());
    let (_, vectors, labels) = fill(&cat, 400, 8, 5);
    let f = Filter::any().label("character", format!("c{}", labels[3]));
    assert_eq!(
        cat.search(&vectors[9], 1000, &f).unwrap(),
        cat.exact_search(&vectors[9], 1000, &f).unwrap()
    );
}

#[test]
fn dump_is_reloaded_when_current_and_rebuilt_when_stale_or_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, vectors, _) = {
        let cat = open(dir.path());
        assert_eq!(cat.index_origin(), IndexOrigin::Built);
        fill(&cat, 300, 10, 6)
    };
    let expected = {
        let cat = open(dir.path());
        assert_eq!(cat.index_origin(), IndexOrigin::Reloaded);
        assert!(cat.check_consistency().unwrap().is_consistent());
        // Inserting into a reloaded graph works too.
        let (more, _) = clustered_vectors(1, DIM, 1, 0.5, 99);
        let extra = cat.add(new_item(&more[0], "z", "extra")).unwrap().id;
        assert_eq!(
            cat.search(&more[0], 1, &Filter::any()).unwrap()[0].id,
            extra
        );
        cat.remove(ids[0]).unwrap();
        hit_ids(&cat.search(&vectors[0], 10, &Filter::any()).unwrap())
    };
    // Stale: the saved graph reflects an older generation.
    let mut no_save = OpenOptions::new(model());
    no_save.save_index_on_close = false;
    {
        let cat = Catalog::open(dir.path(), no_save.clone()).unwrap();
        assert_eq!(cat.index_origin(), IndexOrigin::Reloaded);
        cat.remove(ids[1]).unwrap();
    }
    {
        let cat = Catalog::open(dir.path(), OpenOptions::new(model())).unwrap();
        assert_eq!(cat.index_origin(), IndexOrigin::Built);
        let now = hit_ids(&cat.search(&vectors[0], 10, &Filter::any()).unwrap());
        assert!(!now.contains(&ids[0]) && !now.contains(&ids[1]));
        assert_eq!(
            now[..5],
            expected
                .iter()
                .copied()
                .filter(|i| *i != ids[1])
                .collect::<Vec<_>>()[..5]
        );
    }
    // Damaged: flip bytes in the graph file.
    let dump = dir.path().join("hnsw");
    let graph = std::fs::read_dir(&dump)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".hnsw.graph"))
        .unwrap();
    let mut bytes = std::fs::read(&graph).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid..mid + 16].iter_mut().for_each(|b| *b ^= 0x5A);
    std::fs::write(&graph, bytes).unwrap();
    {
        let cat = Catalog::open(dir.path(), OpenOptions::new(model())).unwrap();
        assert_eq!(cat.index_origin(), IndexOrigin::Built);
        assert!(cat.check_consistency().unwrap().is_consistent());
    }
    std::fs::write(dump.join("manifest.json"), b"{ not json").unwrap();
    let cat = Catalog::open(dir.path(), OpenOptions::new(model())).unwrap();
    assert_eq!(cat.index_origin(), IndexOrigin::Built);
}

#[test]
fn open_errors_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    match Catalog::open(dir.path().join("nothing"), OpenOptions::existing()) {
        Err(e @ CatalogError::NotInitialised { .. }) => {
            assert!(e.to_string().contains("animelens index"))
        }
        other => panic!("expected NotInitialised, got {:?}", other.err()),
    }
    let cat = open(dir.path());
    match Catalog::open(dir.path(), OpenOptions::new(model())) {
        Err(e @ CatalogError::Locked { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&dir.path().display().to_string())
                    && msg.contains("another animelens process")
            );
        }
        other => panic!("expected Locked, got {:?}", other.err()),
    }
    drop(cat);
    let other = ModelTag {
        fingerprint: "fp-new".into(),
        dim: 64,
    };
    match Catalog::open(dir.path(), OpenOptions::new(other)) {
        Err(e @ CatalogError::ModelMismatch { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("fp-test")
                    && msg.contains("fp-new")
                    && msg.contains("rebuild --reembed"),
                "{msg}"
            );
        }
        other => panic!("expected ModelMismatch, got {:?}", other.err()),
    }
    let existing = Catalog::open(dir.path(), OpenOptions::existing()).unwrap();
    assert_eq!(existing.model(), &model());
    drop(existing);
    let mut bad = OpenOptions::new(model());
    bad.hnsw.max_nb_connection = 300;
    assert!(matches!(
        Catalog::open(dir.path(), bad),
        Err(CatalogError::InvalidArgument { .. })
    ));
}

#[test]
fn int8_copies_are_stored_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = OpenOptions::new(model());
    options.store_int8 = true;
    let cat = Catalog::open(dir.path(), options).unwrap();
    let (ids, _, _) = fill(&cat, 5, 1, 7);
    let exact = cat.vector(ids[2]).unwrap().unwrap();
    let q = cat.quantized_vector(ids[2]).unwrap().unwrap();
    assert!(dot(&exact, &q.dequantize()) > 0.99);
}

#[test]
fn characters_centroids_enrolment_and_open_set() {
    let dir = tempfile::tempdir().unwrap();
    let cat = open(dir.path());
    let (ids, vectors, labels) = fill(&cat, 400, 8, 8);
    let c0 = format!("c{}", labels[0]);
    let similar = cat.similar_characters(&c0, 3).unwrap();
    assert_eq!(similar.len(), 3);
    assert!(similar.iter().all(|s| s.name != c0) && similar[0].score >= similar[2].score);
    assert!(matches!(
        cat.similar_characters("nobody", 3),
        Err(CatalogError::UnknownCharacter { .. })
    ));
    let verdict = cat.classify_by_centroid(&vectors[0], 3).unwrap();
    assert_eq!(verdict.label.as_deref(), Some(c0.as_str()));
    // Few-shot enrolment of a new character from a far-away cluster.
    let (shots, _) = clustered_vectors(12, DIM, 1, 0.3, 1234);
    assert_eq!(cat.enroll("newcomer", &shots[..4]).unwrap(), 4);
    assert_eq!(
        cat.classify_by_centroid(&shots[6], 1)
            .unwrap()
            .label
            .as_deref(),
        Some("newcomer")
    );
    // Removing every item of a character removes its centroid.
    let members: Vec<ItemId> = ids
        .iter()
        .zip(&labels)
        .filter(|(_, l)| **l == labels[0])
        .map(|(i, _)| *i)
        .collect();
    members.iter().for_each(|&id| cat.remove(id).unwrap());
    assert!(cat
        .character_centroids()
        .unwrap()
        .iter()
        .all(|(n, _)| *n != c0));
    // Calibrate: known samples are the catalogue's own vectors, unknown ones random directions.
    let mut samples: Vec<(Vec<f32>, String)> = vectors
        .iter()
        .zip(&labels)
        .skip(1)
        .take(60)
        .filter(|(_, l)| **l != labels[0])
        .map(|(v, l)| (v.clone(), format!("c{l}")))
        .collect();
    let (strangers, _) = clustered_vectors(40, DIM, 40, 0.1, 777);
    samples.extend(strangers.into_iter().map(|v| (v, "stranger".to_string())));
    let cal = cat.calibrate_open_set(&samples).unwrap();
    assert!(cal.accuracy > 0.9, "{cal:?}");
    assert_eq!(cat.open_set_threshold().unwrap(), cal.threshold);
    drop(cat);
    let cat = open(dir.path());
    assert_eq!(cat.open_set_threshold().unwrap(), cal.threshold);
    assert_eq!(
        cat.classify_by_centroid(&shots[7], 1)
            .unwrap()
            .label
            .as_deref(),
        Some("newcomer")
    );
    let items = cat
        .enroll_items("late", vec![new_item(&shots[8], "ignored", "late-1")])
        .unwrap();
    assert_eq!(
        cat.get(items[0].id).unwrap().unwrap().character(),
        Some("late")
    );
}

#[test]
fn recommendations_follow_examples() {
    let dir = tempfile::tempdir().unwrap();
    let cat = open(dir.path());
    let (ids, vectors, labels) = fill(&cat, 300, 6, 9);
    let a = labels[0];
    let b = *labels.iter().find(|l| **l != a).unwrap();
    let of = |c: usize| -> Vec<usize> { (0..labels.len()).filter(|&i| labels[i] == c).collect() };
    let (ia, ib) = (of(a), of(b));
    for strategy in [
        RecommendStrategy::AverageVector,
        RecommendStrategy::BestScore,
    ] {
        let q = RecommendQuery {
            positives: vec![vectors[ia[0]].clone(), vectors[ia[1]].clone()],
            negatives: vec![vectors[ib[0]].clone()],
            strategy,
            k: 5,
            filter: Filter::any(),
            exclude: vec![ids[ia[0]], ids[ia[1]]],
        };
        let hits = cat.recommend(&q).unwrap();
        assert_eq!(hits.len(), 5);
        assert!(hits
            .iter()
            .all(|h| h.item.character() == Some(&format!("c{a}")) && !q.exclude.contains(&h.id)));
    }
    let only_negative = RecommendQuery {
        negatives: vec![vectors[ia[0]].clone()],
        strategy: RecommendStrategy::BestScore,
        k: 3,
        ..RecommendQuery::default()
    };
    assert!(cat
        .recommend(&only_negative)
        .unwrap()
        .iter()
        .all(|h| h.item.character() != Some(&format!("c{a}"))));
    assert!(cat
        .recommend(&RecommendQuery {
            k: 3,
            ..RecommendQuery::default()
        })
        .is_err());
    let dups = cat.near_duplicates(&vectors[ia[0]], 0.999).unwrap();
    assert_eq!(hit_ids(&dups), vec![ids[ia[0]]]);
    assert!(cat.near_duplicates(&vectors[ia[0]], -1.0).unwrap().len() == 300);
}

#[test]
fn feeds_use_likes_exclude_seen_and_handle_cold_start() {
    let dir = tempfile::tempdir().unwrap();
    let cat = open(dir.path());
    let (ids, _, labels) = fill(&cat, 300, 6, 10);
    let a = labels[0];
    let liked: Vec<ItemId> = (0..300)
        .filter(|&i| labels[i] == a)
        .take(3)
        .map(|i| ids[i])
        .collect();
    for (t, id) in liked.iter().enumerate() {
        cat.record_event("ann", *id, EventKind::Like, Some(t as u64))
            .unwrap();
    }
    let disliked = ids[(0..300).find(|&i| labels[i] != a).unwrap()];
    cat.record_event("ann", disliked, EventKind::Dislike, Some(10))
        .unwrap();
    cat.record_event("ann", ids[299], EventKind::View, None)
        .unwrap();
    assert_eq!(cat.user_events("ann").unwrap().len(), 5);
    assert!(cat
        .record_event("ann", 1_000_000, EventKind::Like, None)
        .is_err());
    let feed = cat.feed("ann", 8, 1.0).unwrap();
    assert_eq!(feed.len(), 8);
    let seen: HashSet<ItemId> = liked.iter().copied().chain([disliked, ids[299]]).collect();
    assert!(feed.iter().all(|h| !seen.contains(&h.id)));
    assert!(feed
        .iter()
        .all(|h| h.item.character() == Some(&format!("c{a}"))));
    // Diversity: with lambda 0 the feed's items are less alike than with lambda 1.
    let redundancy = |hits: &[Hit]| {
        let vs: Vec<Vec<f32>> = hits
            .iter()
            .map(|h| cat.vector(h.id).unwrap().unwrap())
            .collect();
        let pairs: Vec<f32> = (0..vs.len())
            .flat_map(|i| (0..i).map(move |j| (i, j)))
            .map(|(i, j)| dot(&vs[i], &vs[j]))
            .collect();
        pairs.iter().sum::<f32>() / pairs.len() as f32
    };
    assert!(redundancy(&cat.feed("ann", 8, 0.0).unwrap()) < redundancy(&feed));
    let chars = |hits: &[Hit]| {
        hits.iter()
            .filter_map(|h| h.item.character().map(String::from))
            .collect::<HashSet<_>>()
            .len()
    };
    // Cold start: the most liked item leads, the rest is diverse and stable.
    let cold = cat.feed("bob", 6, 0.9).unwrap();
    assert_eq!(cold.len(), 6);
    assert!(liked.contains(&cold[0].id));
    assert!(chars(&cold) >= 3);
    assert_eq!(hit_ids(&cold), hit_ids(&cat.feed("bob", 6, 0.9).unwrap()));
    assert!(cat.feed("bob", 6, 1.5).is_err());
}

#[test]
fn popularity_counts_distinct_users_and_events_per_user_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let cat = open(dir.path());
    let (ids, _, _) = fill(&cat, 40, 4, 11);
    // One user liking an item 30 times counts once; two users liking another count twice.
    for t in 0..30 {
        cat.record_event("mallory", ids[0], EventKind::Like, Some(t))
            .unwrap();
    }
    for user in ["dave", "erin"] {
        cat.record_event(user, ids[1], EventKind::Like, Some(1))
            .unwrap();
    }
    let cold = cat.feed("newcomer", 4, 1.0).unwrap();
    assert_eq!(cold[0].id, ids[1]);
    assert_eq!(cold[1].id, ids[0]);
    assert_eq!(cold[1].score, 0.5);
    // Only the newest events of a user are kept.
    let extra = 5;
    for t in 0..(crate::limits::MAX_EVENTS_PER_USER + extra) as u64 {
        cat.record_event("busy", ids[2], EventKind::View, Some(1000 + t))
            .unwrap();
    }
    let kept = cat.user_events("busy").unwrap();
    assert_eq!(kept.len(), crate::limits::MAX_EVENTS_PER_USER);
    assert_eq!(kept[0].at_ms, 1000 + extra as u64);
    assert!(cat
        .record_event("../../x", ids[2], EventKind::View, None)
        .is_err());
}

#[test]
fn readers_run_while_a_writer_ingests() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Arc::new(open(dir.path()));
    let (vectors, _) = clustered_vectors(1200, DIM, 12, 0.6, 11);
    cat.add_batch(
        vectors[..200]
            .iter()
            .enumerate()
            .map(|(i, v)| new_item(v, "x", &format!("a{i}")))
            .collect(),
    )
    .unwrap();
    let writer = {
        let cat = Arc::clone(&cat);
        let vectors = vectors.clone();
        std::thread::spawn(move || {
            for (n, chunk) in vectors[200..].chunks(50).enumerate() {
                let items = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, v)| new_item(v, "y", &format!("b{n}-{i}")))
                    .collect();
                let added = cat.add_batch(items).unwrap();
                cat.remove(added[0].id).unwrap();
            }
        })
    };
    let mut seen_removed = false;
    while !writer.is_finished() {
        for q in vectors.iter().step_by(97) {
            let hits = cat.search(q, 10, &Filter::any()).unwrap();
            assert_eq!(hits.len(), 10);
            let live = cat.stats().unwrap().live;
            seen_removed |= live > 200;
            assert!(hits
                .iter()
                .all(|h| cat.get(h.id).map(|i| i.is_some()).unwrap_or(false)
                    || cat.stats().unwrap().tombstoned > 0));
        }
    }
    writer.join().unwrap();
    assert!(seen_removed || cat.stats().unwrap().live == 1180);
    assert_eq!(cat.stats().unwrap().live, 1180);
    assert!(cat.check_consistency().unwrap().is_consistent());
}

#[derive(Debug, Clone)]
enum Op {
    Add(u64),
    Remove(usize),
    Search(u64, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u64>().prop_map(Op::Add),
        1 => any::<usize>().prop_map(Op::Remove),
        2 => (any::<u64>(), 1usize..12).prop_map(|(s, k)| Op::Search(s, k)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
    #[test]
    fn graph_search_equals_exact_search_over_live_items(ops in prop::collection::vec(op(), 1..50)) {
        let dir = tempfile::tempdir().unwrap();
        let mut options = OpenOptions::new(model());
        options.hnsw.ef_search = 200;
        options.save_index_on_close = false;
        let cat = Catalog::open(dir.path(), options).unwrap();
        let mut live: Vec<ItemId> = Vec::new();
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Add(seed) => {
                    let (v, _) = clustered_vectors(1, DIM, 1, 0.5, seed);
                    live.push(cat.add(new_item(&v[0], "p", &format!("{n}"))).unwrap().id);
                }
                Op::Remove(i) if !live.is_empty() => {
                    cat.remove(live.remove(i % live.len())).unwrap();
                }
                Op::Remove(_) => {}
                Op::Search(seed, k) => {
                    let (q, _) = clustered_vectors(1, DIM, 1, 0.5, seed);
                    let got = cat.search(&q[0], k, &Filter::any()).unwrap();
                    let want = cat.exact_search(&q[0], k, &Filter::any()).unwrap();
                    prop_assert_eq!(got.len(), k.min(live.len()));
                    prop_assert_eq!(hit_ids(&got), hit_ids(&want));
                    prop_assert!(got.iter().all(|h| live.contains(&h.id)));
                }
            }
        }
        prop_assert!(cat.check_consistency().unwrap().is_consistent());
    }
}

#[test]
fn a_stored_but_unindexed_item_is_repaired_by_a_retry() {
    // Simulates an add whose sled write landed but whose flush failed (e.g. disk full): the caller
    // got an error, the index never saw the item, and the caller retries.
    let dir = tempfile::tempdir().unwrap();
    let cat = open(dir.path());
    let (vs, _) = clustered_vectors(1, DIM, 1, 0.5, 21);
    let written = write_to_store_only(&cat, &vs[0], "x.png", "orphan");
    assert!(cat.search(&vs[0], 1, &Filter::any()).unwrap().is_empty());
    let retry = cat.add(new_item(&vs[0], "x", "orphan")).unwrap();
    assert_eq!(
        retry,
        AddOutcome {
            id: written[0].0,
            duplicate: false
        }
    );
    assert_eq!(
        cat.search(&vs[0], 1, &Filter::any()).unwrap()[0].id,
        retry.id
    );
    assert!(cat.check_consistency().unwrap().is_consistent());
}

#[test]
fn the_write_after_a_storage_failure_reopens_the_store_and_indexes_a_write_that_landed() {
    let dir = tempfile::tempdir().unwrap();
    let cat = open(dir.path());
    let (_, vs, _) = fill(&cat, 20, 2, 9);
    // A write that reached sled although its caller saw an error, then sled's sticky I/O error.
    let written = write_to_store_only(&cat, &vs[0], "landed.png", "landed");
    cat.store().unwrap().mark_failed();
    let after = cat.add(new_item(&vs[1], "c1", "after-reopen")).unwrap();
    assert!(!after.duplicate);
    assert!(!cat.store().unwrap().has_failed(), "the store was reopened");
    assert!(cat.check_consistency().unwrap().is_consistent());
    let live: HashSet<ItemId> = cat
        .search(&vs[0], 30, &Filter::any())
        .unwrap()
        .iter()
        .map(|h| h.id)
        .collect();
    assert!(live.contains(&written[0].0) && live.contains(&after.id));
    drop(cat);
    let reopened = open(dir.path());
    assert_eq!(reopened.counts().live, 22);
}

#[test]
fn copies_are_found_by_any_view_survive_reopen_and_vanish_when_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (vectors, _) = clustered_vectors(40, DIM, 4, 0.3, 3);
    let ids: Vec<ItemId> = {
        let cat = open(dir.path());
        assert_eq!(cat.copy_dim().unwrap(), None);
        let items: Vec<NewItem> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| NewItem {
                copies: copy_views(i as u64),
                ..new_item(v, "c", &format!("h{i}"))
            })
            .collect();
        let ids = cat.add_batch(items).unwrap().iter().map(|o| o.id).collect();
        assert_eq!(cat.copy_dim().unwrap(), Some(16));
        ids
    };
    let cat = open(dir.path());
    // The second view of item 5, as an upload's mirrored view.
    let upload = [copy_views(99)[0].clone(), copy_views(5)[2].clone()];
    let found = cat.search_copies(&upload, 4).unwrap();
    assert_eq!(found[0].0.id, ids[5]);
    assert_eq!((found[0].0.view, found[0].0.query_view), (2, 1));
    assert!((found[0].0.similarity - 1.0).abs() < 1e-5);
    assert_eq!(cat.copies(ids[5]).unwrap(), copy_views(5));
    let review = cat.review_copy(&upload, 2).unwrap();
    assert!(review.is_copy && !review.calibrated, "{review:?}");
    assert_eq!(review.matches.len(), 2);

    // Added after the copy graph was built: found too.
    let late = cat
        .add(NewItem {
            copies: copy_views(77),
            ..new_item(&vectors[0], "c", "late")
        })
        .unwrap()
        .id;
    assert_eq!(
        cat.search_copies(&copy_views(77)[..1], 1).unwrap()[0].0.id,
        late
    );

    cat.remove(ids[5]).unwrap();
    let found = cat.search_copies(&upload, 4).unwrap();
    assert!(found.iter().all(|(m, _)| m.id != ids[5]));
    cat.compact().unwrap();
    assert!(cat
        .search_copies(&upload, 4)
        .unwrap()
        .iter()
        .all(|(m, _)| m.id != ids[5]));
    assert!(cat.copies(ids[5]).unwrap().is_empty());
}

#[test]
fn copy_descriptors_of_another_length_are_refused_and_the_verdict_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let cat = open(dir.path());
    let (v, _) = clustered_vectors(2, DIM, 1, 0.3, 5);
    cat.add(NewItem {
        copies: copy_views(1),
        ..new_item(&v[0], "c", "a")
    })
    .unwrap();
    let err = cat
        .add(NewItem {
            copies: vec![vec![1.0; 8]],
            ..new_item(&v[1], "c", "b")
        })
        .unwrap_err();
    assert!(err.to_string().contains("copy descriptors"), "{err}");
    assert!(cat.search_copies(&[vec![1.0; 8]], 1).is_err());
    let verdict = CopyVerdict {
        threshold: 0.2,
        precision: 0.99,
        recall: 0.9,
    };
    cat.set_copy_verdict(&verdict).unwrap();
    drop(cat);
    let cat = open(dir.path());
    assert_eq!(cat.copy_verdict().unwrap(), Some(verdict));
    let review = cat.review_copy(&copy_views(1)[..1], 1).unwrap();
    assert!(review.calibrated && review.threshold == 0.2);
}

#[test]
fn int8_graph_rescores_exactly_and_switching_precision_rebuilds_the_saved_graph() {
    let dir = tempfile::tempdir().unwrap();
    let mut int8 = OpenOptions::new(model());
    int8.hnsw.precision = Some(GraphPrecision::Int8);
    let (queries, _) = clustered_vectors(40, DIM, 20, 0.6, 77);
    let (vectors, found) = {
        let cat = Catalog::open(dir.path(), int8.clone()).unwrap();
        let (_, vectors, _) = fill(&cat, 3000, 20, 8);
        assert_eq!(cat.stats().unwrap().graph_precision, GraphPrecision::Int8);
        let (mut found, mut wanted) = (0, 0);
        for q in &queries {
            let hits = cat.search(q, 10, &Filter::any()).unwrap();
            let exact = cat.exact_search(q, 10, &Filter::any()).unwrap();
            let truth: HashSet<ItemId> = hit_ids(&exact).into_iter().collect();
            found += hits.iter().filter(|h| truth.contains(&h.id)).count();
            wanted += truth.len();
            // Scores are the stored f32 cosines, in decreasing order, not the int8 estimates.
            let stored = |id: ItemId| cat.vector(id).unwrap().unwrap();
            for h in &hits {
                assert!((h.score - crate::vector::dot(q, &stored(h.id))).abs() < 1e-6);
            }
            assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        }
        (vectors, found as f32 / wanted as f32)
    };
    assert!(found >= 0.95, "int8 graph recall@10 {found}");
    // The saved int8 graph reloads, also for a caller that does not say (it keeps what is saved);
    // asking for f32 rebuilds it, and back again.
    let mut f32 = OpenOptions::new(model());
    f32.hnsw.precision = Some(GraphPrecision::F32);
    for (options, origin, precision) in [
        (int8.clone(), IndexOrigin::Reloaded, GraphPrecision::Int8),
        (
            OpenOptions::new(model()),
            IndexOrigin::Reloaded,
            GraphPrecision::Int8,
        ),
        (f32.clone(), IndexOrigin::Built, GraphPrecision::F32),
        (
            OpenOptions::new(model()),
            IndexOrigin::Reloaded,
            GraphPrecision::F32,
        ),
        (int8.clone(), IndexOrigin::Built, GraphPrecision::Int8),
    ] {
        let cat = Catalog::open(dir.path(), options).unwrap();
        assert_eq!(cat.index_origin(), origin);
        assert_eq!(cat.stats().unwrap().graph_precision, precision);
        let hits = cat.search(&vectors[5], 1, &Filter::any()).unwrap();
        assert!((hits[0].score - 1.0).abs() < 1e-5);
    }
}
