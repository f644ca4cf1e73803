//! `animelens index export` end to end through the real binary: a catalogue made with
//! `import-vectors` is exported to a folder (always) and, in a `--features milvus` build with
//! milvus-lite installed, into a Milvus collection and back out of it; every copy holds the same
//! items under the same ids with the same vectors, and an export run again adds nothing.

mod web_support;

use animelens_index::{Catalog, OpenOptions, Storage};
use std::path::Path;

/// 40 items of 16-d vectors, two characters.
fn make_catalogue(dir: &Path) -> std::path::PathBuf {
    let lines: Vec<String> = (0..40)
        .map(|i| {
            let v: Vec<f32> = (0..16)
                .map(|j| ((i * 7 + j * 3) % 11) as f32 - 5.0 + 0.1)
                .collect();
            serde_json::json!({
                "source": format!("img{i}.png"),
                "labels": {"character": if i % 2 == 0 { "ame" } else { "gura" }},
                "tags": ["export"],
                "vector": v,
            })
            .to_string()
        })
        .collect();
    let file = dir.join("vectors.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let db = dir.join("source");
    web_support::ok(&[
        "index",
        "--db",
        db.to_str().unwrap(),
        "import-vectors",
        file.to_str().unwrap(),
        "--fingerprint",
        "export-test",
    ]);
    db
}

/// `(id, source, labels, vector)` of every live item.
fn items(dir: &Path) -> Vec<(u64, String, String, Vec<f32>)> {
    let cat = Catalog::open(dir, OpenOptions::existing()).unwrap();
    Storage::live_ids(&cat)
        .unwrap()
        .into_iter()
        .map(|id| {
            let item = Storage::get(&cat, id).unwrap().unwrap();
            let labels = format!("{:?}", item.labels);
            (
                id,
                item.source,
                labels,
                Storage::vector(&cat, id).unwrap().unwrap(),
            )
        })
        .collect()
}

#[test]
fn export_to_a_folder_copies_every_item_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let source = make_catalogue(tmp.path());
    let copy = tmp.path().join("copy");
    let (db, to) = (source.to_str().unwrap(), copy.to_str().unwrap());
    let out = web_support::ok(&["index", "--db", db, "export", "--to", to]);
    assert!(
        out.contains("copied 40 items (0 were there already)"),
        "{out}"
    );
    assert_eq!(items(&copy), items(&source));
    let again = web_support::ok(&["index", "--db", db, "export", "--to", to]);
    assert!(
        again.contains("copied 0 items (40 were there already)"),
        "{again}"
    );
    let same = web_support::run(&["index", "--db", db, "export", "--to", db]);
    assert!(!same.status.success());
    let bad = web_support::run(&["index", "--db", db, "export", "--to", "milvus://host"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("names no collection"));
}

#[cfg(feature = "milvus")]
#[test]
fn export_into_milvus_and_back_round_trips() {
    let Some((milvus, tmp)) = web_support::milvus_lite() else {
        return;
    };
    let source = make_catalogue(tmp.path());
    let url = format!("{}/exported", milvus.uri().replace("http://", "milvus://"));
    let records = tmp.path().join("records");
    let back = tmp.path().join("back");
    let db = source.to_str().unwrap();
    let r = records.to_str().unwrap();
    let out = web_support::ok(&["index", "--db", db, "export", "--to", &url, "--records", r]);
    assert!(out.contains("copied 40 items"), "{out}");
    let no_records = web_support::run(&["index", "--db", db, "export", "--to", &url]);
    assert!(String::from_utf8_lossy(&no_records.stderr).contains("--records"));
    let out = web_support::ok(&[
        "index",
        "export",
        "--from",
        &url,
        "--records",
        r,
        "--to",
        back.to_str().unwrap(),
    ]);
    assert!(out.contains("copied 40 items"), "{out}");
    assert_eq!(items(&back), items(&source));
}
