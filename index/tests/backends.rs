//! The shared backend suite: one list of checks (add, search, filters, delete, update, search by
//! id, recommendations, feeds, characters, enrolment, the open set, copy review, reopening) written once
//! against `&dyn Storage` and run on every backend: the embedded sled + hnsw_rs catalogue always,
//! and, in a build with `--features milvus`, the Milvus backend against a real `milvus-lite
//! server` that each test starts on a free loopback port (reported skipped when milvus-lite is
//! not installed; `.ci/run` installs it). Milvus-only behaviour (the server going away
//! mid-request and coming back) is tested at the end.

use animelens_index::bench::{clustered_vectors, copy_views};
use animelens_index::{
    Catalog, CatalogError, CatalogLogic, EventKind, Filter, ItemId, ItemUpdate, ModelTag, NewItem,
    OpenOptions, RecommendQuery, RecommendStrategy, Storage,
};
use std::collections::{BTreeMap, HashSet};

const DIM: usize = 32;

fn model() -> ModelTag {
    ModelTag {
        fingerprint: "fp-suite".into(),
        dim: DIM,
    }
}

/// Where a fixture's storage lives.
enum Backend {
    Embedded,
    #[cfg(feature = "milvus")]
    Milvus(animelens_index::MilvusLite),
}

/// An opened backend and what keeps it alive (its server, its folder; dropped in that order).
struct Fixture {
    storage: Option<Box<dyn Storage>>,
    backend: Backend,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(backend: Backend, dir: tempfile::TempDir) -> Fixture {
        let mut fixture = Fixture {
            storage: None,
            backend,
            dir,
        };
        fixture.storage = Some(fixture.open());
        fixture
    }

    fn embedded() -> Option<Fixture> {
        Some(Fixture::new(
            Backend::Embedded,
            tempfile::tempdir().unwrap(),
        ))
    }

    #[cfg(feature = "milvus")]
    fn milvus() -> Option<Fixture> {
        let dir = tempfile::tempdir().unwrap();
        let server = animelens_index::MilvusLite::start_for_test(&dir.path().join("milvus"))?;
        Some(Fixture::new(Backend::Milvus(server), dir))
    }

    fn open(&self) -> Box<dyn Storage> {
        let dir = self.dir.path().join("catalog");
        match &self.backend {
            Backend::Embedded => Box::new(Catalog::open(dir, OpenOptions::new(model())).unwrap()),
            #[cfg(feature = "milvus")]
            Backend::Milvus(server) => Box::new(open_milvus(&dir, &server.uri())),
        }
    }

    fn storage(&self) -> &dyn Storage {
        self.storage.as_deref().unwrap()
    }

    #[cfg(feature = "milvus")]
    fn server_uri(&self) -> String {
        match &self.backend {
            Backend::Milvus(server) => server.uri(),
            Backend::Embedded => unreachable!("an embedded fixture has no server"),
        }
    }

    /// Closes the backend and opens it again from what it stored.
    fn reopen(&mut self) {
        self.storage = None;
        self.storage = Some(self.open());
    }

    #[cfg(feature = "milvus")]
    fn server(&mut self) -> &mut animelens_index::MilvusLite {
        match &mut self.backend {
            Backend::Milvus(server) => server,
            Backend::Embedded => unreachable!("an embedded fixture has no server"),
        }
    }
}

#[cfg(feature = "milvus")]
fn open_milvus(dir: &std::path::Path, uri: &str) -> animelens_index::MilvusStorage {
    let config = animelens_index::MilvusConfig {
        uri: uri.into(),
        collection: "suite".into(),
        token: None,
    };
    animelens_index::MilvusStorage::open(dir, &config, Some(model()), &Default::default()).unwrap()
}

fn item(v: &[f32], character: &str, hash: &str, tags: &[&str]) -> NewItem {
    NewItem {
        source: format!("{character}/{hash}.png"),
        labels: BTreeMap::from([
            ("character".to_string(), character.to_string()),
            ("work".to_string(), format!("work-of-{character}")),
        ]),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        width: 64,
        height: 48,
        content_hash: hash.into(),
        thumbnail: vec![0xFF, 0xD8, hash.len() as u8],
        vector: v.to_vec(),
        copies: vec![],
        frame: None,
    }
}

/// 60 items in 3 characters `c0..c2`; every third item tagged `even` when its index is even.
fn fill(s: &dyn Storage) -> (Vec<ItemId>, Vec<Vec<f32>>, Vec<usize>) {
    let (vectors, labels) = clustered_vectors(60, DIM, 3, 0.5, 7);
    let items = vectors
        .iter()
        .zip(&labels)
        .enumerate()
        .map(|(i, (v, c))| {
            let tags: &[&str] = if i % 2 == 0 { &["even"] } else { &[] };
            item(v, &format!("c{c}"), &format!("h{i}"), tags)
        })
        .collect();
    let ids = s.add_batch(items).unwrap().iter().map(|o| o.id).collect();
    (ids, vectors, labels)
}

/// The characters' names, as `character_centroids` lists them.
fn character_names(s: &dyn Storage) -> Vec<String> {
    s.character_centroids()
        .unwrap()
        .into_iter()
        .map(|c| c.0)
        .collect()
}

fn unit(v: &[f32]) -> Vec<f32> {
    animelens_index::normalise(v).unwrap()
}

fn add_search_and_duplicates(s: &dyn Storage) {
    let (ids, vectors, labels) = fill(s);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 60);
    assert_eq!(s.counts().live, 60);
    assert_eq!(s.stats().unwrap().live, 60);
    for (id, v) in ids.iter().zip(&vectors).step_by(7) {
        let hits = s.search(v, 5, &Filter::any()).unwrap();
        assert_eq!(hits[0].id, *id);
        assert!((hits[0].score - 1.0).abs() < 1e-4, "{}", hits[0].score);
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    }
    let again = s
        .add_batch(vec![item(&vectors[3], "c9", "h3", &[])])
        .unwrap();
    assert_eq!((again[0].id, again[0].duplicate), (ids[3], true));
    assert_eq!(s.counts().live, 60);
    let record = s.get(ids[5]).unwrap().unwrap();
    assert_eq!(
        (record.source.as_str(), record.width, record.height),
        (format!("c{}/h5.png", labels[5]).as_str(), 64, 48)
    );
    assert_eq!(s.thumbnail(ids[5]).unwrap().unwrap(), vec![0xFF, 0xD8, 2]);
    let stored = s.vector(ids[5]).unwrap().unwrap();
    let expected = unit(&vectors[5]);
    assert!(stored
        .iter()
        .zip(&expected)
        .all(|(a, b)| (a - b).abs() < 1e-6));
    assert_eq!(s.find_by_hash("h5").unwrap(), Some(ids[5]));
    assert_eq!(s.find_by_hash("nope").unwrap(), None);
    assert_eq!(s.live_ids().unwrap().len(), 60);
}

/// Results agree with an exact scan of the stored vectors.
fn agrees_with_exact_search(s: &dyn Storage) {
    let (ids, vectors, _) = fill(s);
    let stored: Vec<(ItemId, Vec<f32>)> = ids
        .iter()
        .map(|&id| (id, s.vector(id).unwrap().unwrap()))
        .collect();
    for q in vectors.iter().step_by(5) {
        let q = unit(q);
        let mut exact: Vec<(ItemId, f32)> = stored
            .iter()
            .map(|(id, v)| (*id, animelens_index::dot(&q, v)))
            .collect();
        exact.sort_by(|a, b| b.1.total_cmp(&a.1));
        let got = s
            .nearest(&q, 10, &Filter::any(), &HashSet::new(), 64)
            .unwrap();
        let want: HashSet<ItemId> = exact[..10].iter().map(|h| h.0).collect();
        let found = got.iter().filter(|h| want.contains(&h.0)).count();
        assert!(found >= 9, "recall {found}/10");
        for (id, score) in got {
            let truth = exact.iter().find(|h| h.0 == id).unwrap().1;
            assert!((score - truth).abs() < 1e-4, "{score} vs {truth}");
        }
    }
}

fn filters(s: &dyn Storage) {
    let (ids, vectors, labels) = fill(s);
    let q = &vectors[0];
    let by_character = s
        .search(q, 100, &Filter::any().label("character", "c1"))
        .unwrap();
    let expected: HashSet<ItemId> = ids
        .iter()
        .zip(&labels)
        .filter(|(_, &c)| c == 1)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(
        by_character.iter().map(|h| h.id).collect::<HashSet<_>>(),
        expected
    );
    let both = Filter::any().label("work", "work-of-c1").tag("even");
    let hits = s.search(q, 100, &both).unwrap();
    assert!(!hits.is_empty());
    assert!(hits.iter().all(|h| both.matches(&h.item)));
    let matching = s.matching_ids(&both, &HashSet::new()).unwrap();
    assert_eq!(matching.len(), hits.len());
    assert!(matching.windows(2).all(|w| w[0] < w[1]));
    let quoted = Filter::any().label("character", "it's \"quoted\"");
    assert!(s.search(q, 5, &quoted).unwrap().is_empty());
}

fn delete(s: &dyn Storage) {
    let (ids, vectors, _) = fill(s);
    s.remove(ids[4]).unwrap();
    assert_eq!(s.get(ids[4]).unwrap(), None);
    assert_eq!(s.vector(ids[4]).unwrap(), None);
    assert_eq!(s.counts().live, 59);
    let hits = s.search(&vectors[4], 60, &Filter::any()).unwrap();
    assert_eq!(hits.len(), 59);
    assert!(hits.iter().all(|h| h.id != ids[4]));
    assert!(matches!(
        s.remove(ids[4]),
        Err(CatalogError::UnknownItem { .. })
    ));
    // The content hash is free again once its item is gone.
    let re = s
        .add_batch(vec![item(&vectors[4], "c0", "h4", &[])])
        .unwrap();
    assert!(!re[0].duplicate);
    assert_ne!(re[0].id, ids[4]);
    assert_eq!(
        s.search(&vectors[4], 1, &Filter::any()).unwrap()[0].id,
        re[0].id
    );
}

/// Compaction deletes removed items' records for good and keeps everything else answering.
fn compaction(s: &dyn Storage) {
    let (ids, vectors, _) = fill(s);
    s.remove(ids[4]).unwrap();
    s.remove(ids[9]).unwrap();
    assert_eq!(s.stats().unwrap().tombstoned, 2);
    let report = s.compact().unwrap();
    assert_eq!((report.purged, report.live), (2, 58));
    assert_eq!(s.stats().unwrap().tombstoned, 0);
    assert_eq!(s.get(ids[4]).unwrap(), None);
    let hits = s.search(&vectors[5], 60, &Filter::any()).unwrap();
    assert_eq!(hits.len(), 58);
    assert_eq!(hits[0].id, ids[5]);
    assert_eq!(s.compact().unwrap().purged, 0);
}

fn update(s: &dyn Storage) {
    let (ids, vectors, labels) = fill(s);
    let id = ids[0];
    let from = format!("c{}", labels[0]);
    let change = ItemUpdate {
        labels: Some(BTreeMap::from([("character".into(), "renamed".into())])),
        tags: Some(vec!["fresh".into()]),
    };
    let new = s.update(id, &change).unwrap();
    assert_eq!(new.tags, vec!["fresh".to_string()]);
    assert_eq!(s.get(id).unwrap().unwrap().labels["character"], "renamed");
    let renamed = s
        .search(
            &vectors[0],
            10,
            &Filter::any().label("character", "renamed"),
        )
        .unwrap();
    assert_eq!(renamed.iter().map(|h| h.id).collect::<Vec<_>>(), vec![id]);
    let old = s
        .search(
            &vectors[0],
            60,
            &Filter::any().label("character", from.as_str()),
        )
        .unwrap();
    assert!(old.iter().all(|h| h.id != id));
    assert_eq!(
        s.search(&vectors[0], 5, &Filter::any().tag("fresh"))
            .unwrap()
            .len(),
        1
    );
    let names = character_names(s);
    assert!(names.contains(&"renamed".to_string()), "{names:?}");
    assert!(matches!(
        s.update(999_999, &change),
        Err(CatalogError::UnknownItem { .. })
    ));
}

fn search_by_id(s: &dyn Storage) {
    let (ids, _, labels) = fill(s);
    let hits = s.search_by_id(ids[2], 5, &Filter::any()).unwrap();
    assert_eq!(hits.len(), 5);
    assert!(hits.iter().all(|h| h.id != ids[2]));
    let own = format!("c{}", labels[2]);
    assert!(
        hits.iter().all(|h| h.item.labels["character"] == own),
        "nearest are its own cluster"
    );
    assert!(matches!(
        s.search_by_id(999_999, 5, &Filter::any()),
        Err(CatalogError::UnknownItem { .. })
    ));
}

fn recommend(s: &dyn Storage) {
    let (ids, vectors, labels) = fill(s);
    let positive = unit(&vectors[0]);
    let negative_index = labels.iter().position(|&c| c != labels[0]).unwrap();
    for strategy in [
        RecommendStrategy::AverageVector,
        RecommendStrategy::BestScore,
    ] {
        let hits = s
            .recommend(&RecommendQuery {
                positives: vec![positive.clone()],
                negatives: vec![unit(&vectors[negative_index])],
                strategy,
                k: 5,
                filter: Filter::any(),
                exclude: vec![ids[0], ids[1]],
            })
            .unwrap();
        assert_eq!(hits.len(), 5, "{strategy:?}");
        assert!(hits.iter().all(|h| h.id != ids[0] && h.id != ids[1]));
        let own = format!("c{}", labels[0]);
        assert!(
            hits.iter().all(|h| h.item.labels["character"] == own),
            "{strategy:?}"
        );
    }
}

fn feed(s: &dyn Storage) {
    let (ids, _, labels) = fill(s);
    let cold: Vec<ItemId> = s
        .feed("alice", 6, 0.7)
        .unwrap()
        .iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(cold.len(), 6);
    let liked: Vec<ItemId> = ids
        .iter()
        .zip(&labels)
        .filter(|(_, &c)| c == 2)
        .map(|(id, _)| *id)
        .take(2)
        .collect();
    for &id in &liked {
        s.record_event("alice", id, EventKind::Like, None).unwrap();
    }
    s.record_event("alice", cold[0], EventKind::View, None)
        .unwrap();
    let warm = s.feed("alice", 6, 1.0).unwrap();
    assert_eq!(warm.len(), 6);
    let seen: HashSet<ItemId> = liked.iter().copied().chain([cold[0]]).collect();
    assert!(warm.iter().all(|h| !seen.contains(&h.id)));
    assert!(
        warm.iter().all(|h| h.item.labels["character"] == "c2"),
        "a pure-relevance feed follows the likes"
    );
    assert_eq!(s.user_events("alice").unwrap().len(), 3);
    let popular = s.popularity().unwrap();
    assert!(
        liked.iter().all(|id| popular.contains(&(*id, 1))),
        "{popular:?}"
    );
    assert!(matches!(
        s.record_event("alice", 999_999, EventKind::Like, None),
        Err(CatalogError::UnknownItem { .. })
    ));
}

fn characters_and_enrolment(s: &dyn Storage) {
    let (_, vectors, labels) = fill(s);
    let names = character_names(s);
    assert_eq!(names, ["c0", "c1", "c2"]);
    let similar = s.similar_characters("c0", 2).unwrap();
    assert_eq!(similar.len(), 2);
    assert!(similar.iter().all(|c| c.name != "c0"));
    assert!(matches!(
        s.similar_characters("nobody", 2),
        Err(CatalogError::UnknownCharacter { .. })
    ));
    let verdict = s.classify_by_centroid(&vectors[1], 3).unwrap();
    assert_eq!(verdict.candidates[0].name, format!("c{}", labels[1]));
    // A new character from three shots around a new direction.
    let centre: Vec<f32> = (0..DIM)
        .map(|i| if i % 3 == 0 { 1.0 } else { -0.2 })
        .collect();
    let shots: Vec<Vec<f32>> = (0..3)
        .map(|k| {
            unit(
                &centre
                    .iter()
                    .enumerate()
                    .map(|(i, x)| x + 0.05 * ((i + k) % 4) as f32)
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(s.enroll("newcomer", &shots).unwrap(), 3);
    assert_eq!(s.enroll("newcomer", &shots[..1]).unwrap(), 4);
    let verdict = s.classify_by_centroid(&centre, 1).unwrap();
    assert_eq!(verdict.candidates[0].name, "newcomer");
    assert_eq!(s.character_centroids().unwrap().len(), 4);
}

fn open_set(s: &dyn Storage) {
    let (_, vectors, labels) = fill(s);
    assert!(!s.open_set_calibrated().unwrap());
    let samples: Vec<(Vec<f32>, String)> = vectors
        .iter()
        .zip(&labels)
        .map(|(v, c)| (v.clone(), format!("c{c}")))
        .collect();
    let calibration = s.calibrate_open_set(&samples).unwrap();
    assert!(s.open_set_calibrated().unwrap());
    assert_eq!(s.open_set_threshold().unwrap(), calibration.threshold);
    assert!(calibration.known > 0 && calibration.unknown > 0);
    assert!(calibration.accuracy > 0.5, "{calibration:?}");
}

fn survives_a_reopen(fixture: &mut Fixture) {
    let s = fixture.storage();
    let (ids, vectors, _) = fill(s);
    s.remove(ids[1]).unwrap();
    s.record_event("bob", ids[2], EventKind::Like, None)
        .unwrap();
    s.enroll("shot", &[unit(&vectors[9])]).unwrap();
    s.store_threshold(0.42).unwrap();
    let before = s.character_centroids().unwrap();
    fixture.reopen();
    let s = fixture.storage();
    assert_eq!(s.counts().live, 59);
    assert_eq!(s.get(ids[1]).unwrap(), None);
    assert_eq!(
        s.search(&vectors[3], 1, &Filter::any()).unwrap()[0].id,
        ids[3]
    );
    assert_eq!(s.user_events("bob").unwrap().len(), 1);
    assert_eq!(s.stored_threshold().unwrap(), Some(0.42));
    let after = s.character_centroids().unwrap();
    assert_eq!(before.len(), after.len());
    for ((a, va), (b, vb)) in before.iter().zip(&after) {
        assert_eq!(a, b);
        assert!(va.iter().zip(vb).all(|(x, y)| (x - y).abs() < 1e-4));
    }
    let next = s
        .add_batch(vec![item(&vectors[0], "c0", "fresh", &[])])
        .unwrap();
    assert!(
        ids.iter().all(|&id| id != next[0].id),
        "ids are never reused"
    );
}

/// Everything a migration must carry, read back in a comparable form.
type Contents = (
    Vec<(animelens_index::Item, Vec<f32>, Vec<u8>, Vec<Vec<f32>>)>,
    Vec<(String, Vec<animelens_index::Event>)>,
    Vec<(String, animelens_index::VectorSum)>,
    Option<f32>,
    Vec<(ItemId, u64)>,
    Option<animelens_index::CopyVerdict>,
);

fn contents(s: &dyn Storage) -> Contents {
    let items = s
        .live_ids()
        .unwrap()
        .into_iter()
        .map(|id| {
            (
                s.get(id).unwrap().unwrap(),
                s.vector(id).unwrap().unwrap(),
                s.thumbnail(id).unwrap().unwrap_or_default(),
                s.copies(&[id]).unwrap().remove(0),
            )
        })
        .collect();
    let users = s
        .users()
        .unwrap()
        .into_iter()
        .map(|u| {
            let events = s.user_events(&u).unwrap();
            (u, events)
        })
        .collect();
    let mut popularity = s.popularity().unwrap();
    popularity.sort();
    (
        items,
        users,
        s.enrolments().unwrap(),
        s.stored_threshold().unwrap(),
        popularity,
        s.copy_verdict().unwrap(),
    )
}

/// Fills `s` with items (three with copy descriptors), a removal, likes and views of two users, an
/// enrolment, a threshold and a copy verdict.
fn populate(s: &dyn Storage) {
    let (ids, vectors, _) = fill(s);
    let described: Vec<NewItem> = (0..3u64)
        .map(|i| NewItem {
            copies: copy_views(i),
            ..item(
                &vectors[i as usize * 5],
                "c0",
                &format!("described{i}"),
                &[],
            )
        })
        .collect();
    s.add_batch(described).unwrap();
    s.set_copy_verdict(&animelens_index::CopyVerdict {
        threshold: 0.25,
        precision: 0.99,
        recall: 0.8,
    })
    .unwrap();
    s.remove(ids[7]).unwrap();
    s.record_event("alice", ids[1], EventKind::Like, Some(1_000))
        .unwrap();
    s.record_event("alice", ids[2], EventKind::View, Some(2_000))
        .unwrap();
    s.record_event("bob", ids[1], EventKind::Like, Some(3_000))
        .unwrap();
    s.enroll("shot", &[unit(&vectors[9]), unit(&vectors[10])])
        .unwrap();
    s.store_threshold(0.37).unwrap();
}

/// A copy into `to` carries everything exactly (ids and times included), and running it again
/// (a resumed copy) adds nothing.
fn migrates_exactly_into(from: &dyn Storage, to: &dyn Storage) {
    let report = animelens_index::copy_catalogue(from, to, false).unwrap();
    assert_eq!((report.items, report.already_there), (62, 0), "{report}");
    assert_eq!(
        (report.users, report.events, report.enrolments),
        (2, 3, 1),
        "{report}"
    );
    assert!(report.threshold);
    assert_eq!(contents(to), contents(from));
    let again = animelens_index::copy_catalogue(from, to, false).unwrap();
    assert_eq!(
        (again.items, again.already_there, again.events),
        (0, 62, 0),
        "{again}"
    );
    assert_eq!(contents(to), contents(from));
    let views = copy_views(1);
    let found = |s: &dyn Storage| s.search_copies(&views[2..], 1).unwrap()[0].1.source.clone();
    assert_eq!(found(to), found(from));
    let q = from.vector(from.live_ids().unwrap()[3]).unwrap().unwrap();
    let ids = |s: &dyn Storage| -> Vec<ItemId> {
        s.search(&q, 5, &Filter::any())
            .unwrap()
            .iter()
            .map(|h| h.id)
            .collect()
    };
    assert_eq!(ids(to), ids(from));
    let fresh = to
        .add_batch(vec![item(&q, "c0", "after-copy", &[])])
        .unwrap();
    assert!(
        from.live_ids().unwrap().iter().all(|&id| id < fresh[0].id),
        "new ids follow the copied ones"
    );
}

#[test]
fn migration_between_embedded_catalogues_round_trips_exactly() {
    let (a, b) = (Fixture::embedded().unwrap(), Fixture::embedded().unwrap());
    populate(a.storage());
    migrates_exactly_into(a.storage(), b.storage());
}

/// embedded → Milvus → embedded: what comes back is what went in.
#[cfg(feature = "milvus")]
#[test]
fn migration_through_milvus_round_trips_exactly() {
    let Some(milvus) = Fixture::milvus() else {
        return;
    };
    let (local, back) = (Fixture::embedded().unwrap(), Fixture::embedded().unwrap());
    populate(local.storage());
    migrates_exactly_into(local.storage(), milvus.storage());
    let report = animelens_index::copy_catalogue(milvus.storage(), back.storage(), false).unwrap();
    assert_eq!(
        report.items, 63,
        "62 copied plus the one added after the copy"
    );
    assert_eq!(contents(back.storage()), contents(milvus.storage()));
}

/// The model a re-embedding copy switches to.
fn next_model() -> ModelTag {
    ModelTag {
        fingerprint: "fp-next".into(),
        dim: 16,
    }
}

/// A re-embedding copy of a populated `from` into `to` (a new catalogue of [`next_model`]): the
/// "new model" keeps the first 16 components reversed and gives one copy view; the item whose
/// source is `c0/h4.png` cannot be embedded. Ids, records and events travel; what belonged to
/// the old model does not; a second run adds nothing.
fn reembeds_into(from: &dyn Storage, to: &dyn Storage) {
    let mut embed = |items: &[animelens_index::ReembedItem]| {
        items
            .iter()
            .map(|r| {
                if r.item.source.ends_with("/h4.png") {
                    return Err("no source".to_string());
                }
                let v = from.vector(r.item.id).unwrap().unwrap();
                let next: Vec<f32> = v[..16].iter().rev().copied().collect();
                Ok(animelens_index::ItemVectors {
                    copies: vec![unit(&next)],
                    vector: next,
                })
            })
            .collect()
    };
    let report = animelens_index::reembed_catalogue(from, to, false, &mut embed).unwrap();
    let live = from.live_ids().unwrap();
    assert_eq!(
        (report.items, report.not_reembedded.len()),
        (live.len() - 1, 1)
    );
    assert_eq!(to.model(), &next_model());
    let (users, events) = (report.users, report.events);
    assert_eq!(
        (users, events, report.enrolments, report.threshold),
        (2, 3, 0, false)
    );
    for &id in &live {
        let Some(item) = to.get(id).unwrap() else {
            assert!(from.get(id).unwrap().unwrap().source.ends_with("/h4.png"));
            continue;
        };
        assert_eq!(item, from.get(id).unwrap().unwrap());
        let old = from.vector(id).unwrap().unwrap();
        let want = unit(&old[..16].iter().rev().copied().collect::<Vec<_>>());
        let got = to.vector(id).unwrap().unwrap();
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5));
        assert_eq!(to.copies(&[id]).unwrap()[0].len(), 1);
    }
    assert_eq!(
        to.user_events("alice").unwrap(),
        from.user_events("alice").unwrap()
    );
    assert!(to.enrolments().unwrap().is_empty());
    assert_eq!(to.stored_threshold().unwrap(), None);
    assert_eq!(to.copy_verdict().unwrap(), None);
    let again = animelens_index::reembed_catalogue(from, to, false, &mut embed).unwrap();
    assert_eq!((again.items, again.already_there), (0, live.len() - 1));
}

#[test]
fn reembedding_into_a_new_embedded_catalogue() {
    let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let from = Catalog::open(from.path(), OpenOptions::new(model())).unwrap();
    let to = Catalog::open(to.path(), OpenOptions::new(next_model())).unwrap();
    populate(&from);
    reembeds_into(&from, &to);
}

#[cfg(feature = "milvus")]
#[test]
fn reembedding_into_a_new_milvus_collection() {
    let Some(milvus) = Fixture::milvus() else {
        return;
    };
    populate(milvus.storage());
    let config = animelens_index::MilvusConfig {
        uri: milvus.server_uri(),
        collection: "suite_next".into(),
        token: None,
    };
    let records = milvus.dir.path().join("next");
    let next = animelens_index::MilvusStorage::open(
        &records,
        &config,
        Some(next_model()),
        &Default::default(),
    )
    .unwrap();
    reembeds_into(milvus.storage(), &next);
}

/// Copyright review on the storage: every view of a picture finds it, the verdict is stored, a
/// removed picture is not found again, and all of it survives a reopen.
fn copy_review(fixture: &mut Fixture) {
    let s = fixture.storage();
    assert_eq!(s.copy_dim().unwrap(), None);
    assert!(s.search_copies(&copy_views(1), 3).unwrap().is_empty());
    let (vectors, _) = clustered_vectors(30, DIM, 3, 0.5, 11);
    let items: Vec<NewItem> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| NewItem {
            copies: copy_views(i as u64),
            ..item(v, "c", &format!("copy{i}"), &[])
        })
        .collect();
    let ids: Vec<ItemId> = s.add_batch(items).unwrap().iter().map(|o| o.id).collect();
    assert_eq!(s.copy_dim().unwrap(), Some(16));
    // An unrelated view, then the second view of picture 5 as the upload's mirrored view.
    let upload = [copy_views(99)[0].clone(), copy_views(5)[2].clone()];
    let found = s.search_copies(&upload, 4).unwrap();
    assert_eq!(found.len(), 4);
    assert_eq!(found[0].0.id, ids[5]);
    assert_eq!((found[0].0.view, found[0].0.query_view), (2, 1));
    assert!((found[0].0.similarity - 1.0).abs() < 1e-4);
    assert_eq!(found[0].1.source, "c/copy5.png");
    let review = s.review_copy(&upload, 2).unwrap();
    assert!(review.is_copy && !review.calibrated, "{review:?}");
    let exact = s
        .audit_upload("up".into(), "copy7", &upload, 1, |_| vec!["edited".into()])
        .unwrap();
    assert_eq!(
        (exact.verdict, exact.edit.clone()),
        ("copy", vec!["exact".to_string()])
    );
    assert_eq!(exact.matches[0].id, ids[7]);
    let err = s.search_copies(&[vec![0.5; 8]], 1).unwrap_err();
    assert!(err.to_string().contains("length 8"), "{err}");
    let verdict = animelens_index::CopyVerdict {
        threshold: 0.2,
        precision: 0.99,
        recall: 0.9,
    };
    s.set_copy_verdict(&verdict).unwrap();
    s.remove(ids[5]).unwrap();
    let after = s.search_copies(&upload, 4).unwrap();
    assert!(after.iter().all(|(m, _)| m.id != ids[5]));

    fixture.reopen();
    let s = fixture.storage();
    assert_eq!(s.copy_dim().unwrap(), Some(16));
    assert_eq!(s.copy_verdict().unwrap(), Some(verdict));
    let again = s.search_copies(&copy_views(6)[1..2], 2).unwrap();
    assert_eq!((again[0].0.id, again[0].0.view), (ids[6], 1));
    let review = s.review_copy(&copy_views(6)[1..2], 1).unwrap();
    assert!(review.calibrated && review.threshold == 0.2 && review.is_copy);
}

/// Runs each check of the list on each backend.
macro_rules! on_every_backend {
    ($($check:ident),* ; $($fixture_check:ident),*) => {
        mod embedded {
            $(#[test] fn $check() { let f = super::Fixture::embedded().unwrap(); super::$check(f.storage()); })*
            $(#[test] fn $fixture_check() { let mut f = super::Fixture::embedded().unwrap(); super::$fixture_check(&mut f); })*
        }
        #[cfg(feature = "milvus")]
        mod milvus {
            $(#[test] fn $check() { if let Some(f) = super::Fixture::milvus() { super::$check(f.storage()); } })*
            $(#[test] fn $fixture_check() { if let Some(mut f) = super::Fixture::milvus() { super::$fixture_check(&mut f); } })*
        }
    };
}

on_every_backend!(
    add_search_and_duplicates, agrees_with_exact_search, filters, delete, compaction, update, search_by_id,
    recommend, feed, characters_and_enrolment, open_set;
    survives_a_reopen, copy_review
);

/// The Milvus server going away gives `BackendUnavailable` (the service's 503), loses nothing,
/// and the same storage works again once the server is back.
#[cfg(feature = "milvus")]
#[test]
fn milvus_server_down_is_unavailable_and_recovers() {
    let Some(mut f) = Fixture::milvus() else {
        return;
    };
    let (ids, vectors, _) = fill(f.storage());
    f.server().stop();
    let err = f
        .storage()
        .search(&vectors[0], 3, &Filter::any())
        .unwrap_err();
    assert!(
        matches!(err, CatalogError::BackendUnavailable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("milvus_uri"), "{err}");
    let failed = f
        .storage()
        .add_batch(vec![item(&vectors[0], "c0", "while-down", &[])]);
    assert!(matches!(
        failed,
        Err(CatalogError::BackendUnavailable { .. })
    ));
    assert_eq!(
        f.storage().counts().live,
        60,
        "the failed add left nothing behind"
    );
    assert_eq!(f.storage().find_by_hash("while-down").unwrap(), None);
    f.server().start_again().unwrap();
    let hits = f.storage().search(&vectors[0], 3, &Filter::any()).unwrap();
    assert_eq!(hits[0].id, ids[0]);
    let added = f
        .storage()
        .add_batch(vec![item(&vectors[0], "c0", "while-down", &[])])
        .unwrap();
    assert!(!added[0].duplicate);
}
