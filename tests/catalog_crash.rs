//! Crash safety of the catalogue: the real binary imports vectors, is killed with SIGKILL in the
//! middle of the ingest, and every item it reported as added must be present and searchable after
//! reopening, with store and index in agreement; a second import then completes the catalogue.
//!
//! Needs `animelens index --db DIR import-vectors FILE --fingerprint FP` wired in `src/main.rs`
//! (see the comment at the top of `src/commands/catalog.rs`); it does not compile without it.

use animelens_index::{Catalog, CatalogLogic, Filter, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

const DIM: usize = 64;
const LINES: usize = 6_000;

/// Deterministic pseudo-random unit vectors (xorshift), one JSON line each.
fn write_vectors(path: &Path) {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..LINES {
        let v: Vec<f32> = (0..DIM).map(|_| next()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let v: Vec<f32> = v.iter().map(|x| x / norm).collect();
        let line = serde_json::json!({
            "source": format!("synthetic/{i}.png"),
            "labels": {"character": format!("c{}", i % 10)},
            "tags": [],
            "content_hash": format!("hash-{i}"),
            "vector": v,
        });
        writeln!(out, "{line}").unwrap();
    }
}

/// Runs the import; with `kill_after = Some(n)` kills it with SIGKILL after `n` reported adds.
/// Returns the ids it reported as added.
fn import(db: &Path, file: &Path, kill_after: Option<usize>) -> Vec<u64> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_animelens"))
        .args(["index", "--db"])
        .arg(db)
        .arg("import-vectors")
        .arg(file)
        .args(["--fingerprint", "crash-test", "--batch", "16"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the animelens binary runs");
    let mut added = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let Ok(line) = line else { break };
        if let Some(id) = line.strip_prefix("added ") {
            added.push(id.trim().parse().unwrap());
        }
        if kill_after.is_some_and(|n| added.len() >= n) {
            child.kill().unwrap(); // SIGKILL on Unix
            break;
        }
    }
    let status = child.wait().unwrap();
    if kill_after.is_none() {
        assert!(status.success(), "import failed: {status}");
    }
    added
}

#[test]
fn reported_adds_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (db, file) = (dir.path().join("catalog"), dir.path().join("vectors.jsonl"));
    write_vectors(&file);
    let mut reported = import(&db, &file, Some(500));
    assert!(
        reported.len() >= 500,
        "the binary reported {} adds before being killed: is `animelens index import-vectors` wired \
         into src/main.rs (see src/commands/catalog.rs)?",
        reported.len()
    );
    {
        let cat = Catalog::open(&db, OpenOptions::existing()).unwrap();
        assert!(cat.check_consistency().unwrap().is_consistent());
        for &id in &reported {
            let v = cat
                .vector(id)
                .unwrap()
                .unwrap_or_else(|| panic!("reported item {id} lost"));
            // The graph search is approximate: an item must be among its own ten nearest (at
            // similarity 1), not necessarily first among random 64-d vectors this close.
            let hits = cat.search(&v, 10, &Filter::any()).unwrap();
            assert!(
                hits.iter().any(|hit| hit.id == id),
                "reported item {id} is stored but its own vector does not find it"
            );
        }
        assert!(cat.stats().unwrap().live >= reported.len());
    }
    // Killed again, later on, then finished: duplicates are recognised by content hash.
    reported.extend(import(&db, &file, Some(300)));
    reported.extend(import(&db, &file, None));
    let cat = Catalog::open(&db, OpenOptions::existing()).unwrap();
    let stats = cat.stats().unwrap();
    assert_eq!(stats.live, LINES);
    assert!(cat.check_consistency().unwrap().is_consistent());
    assert!(reported.iter().all(|&id| cat.get(id).unwrap().is_some()));
}
