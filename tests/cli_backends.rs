//! The CLI's catalogue commands on both storages through the real binary: one list of commands
//! (`index add`, `search` by image and by id, `identify`, `similar-characters`, `enroll`,
//! `index update`, `index remove`, `index compact`, `audit`, `index stats`, then `index export --reembed-with`
//! into a new catalogue) run against a catalogue folder and, in a
//! `--features milvus` build with milvus-lite installed, against `--db milvus://… --records DIR`,
//! where the answers must equal the folder's. Commands only the embedded catalogue can do are
//! refused on Milvus with a message saying so.

mod web_support;

use serde_json::Value;
use std::path::Path;
use web_support::{gallery_characters, ok, run, small_gallery, tiny_model};

/// What the commands answered, in a form both backends must agree on.
#[derive(Debug, PartialEq)]
struct Answers {
    /// `(id, score to 4 decimals)` of each search.
    searches: Vec<Vec<(u64, String)>>,
    /// `identify`'s JSON, scores to 4 decimals.
    identified: Vec<(String, String)>,
    /// `similar-characters` as `(name, score)`.
    similar: Vec<(String, String)>,
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn score(v: &Value) -> String {
    format!("{:.4}", v.as_f64().unwrap())
}

fn hits(text: &str) -> Vec<(u64, String)> {
    lines(text)
        .iter()
        .map(|h| (h["id"].as_u64().unwrap(), score(&h["score"])))
        .collect()
}

/// A tiny model and a 3-character gallery in `dir`, shared by the runs a test compares.
struct Fixture {
    model: String,
    gallery: String,
    names: Vec<String>,
    query: String,
}

fn fixture(dir: &Path) -> Fixture {
    let model = tiny_model(dir);
    let gallery = small_gallery(&dir.join("gallery"), 3, 4);
    let names = gallery_characters(&gallery);
    let mut pictures: Vec<_> = std::fs::read_dir(gallery.join("train").join(&names[0]))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pictures.sort();
    Fixture {
        model: model.display().to_string(),
        gallery: gallery.display().to_string(),
        names,
        query: pictures[0].display().to_string(),
    }
}

/// Runs the command list against the catalogue named by `db` (`--db …` and maybe `--records …`).
fn commands_on(db: &[&str], f: &Fixture) -> Answers {
    let (model, gallery, query, names) = (
        f.model.as_str(),
        f.gallery.as_str(),
        f.query.as_str(),
        &f.names,
    );
    let with_db =
        |args: &[&str]| -> Vec<String> { args.iter().chain(db).map(|s| s.to_string()).collect() };
    let ok_on = |args: &[&str]| {
        let args = with_db(args);
        ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let added = ok_on(&["index", "add", gallery, "--model", model]);
    assert!(added.contains("added 12 items"), "{added}");
    // The model recorded at `add` is the default of the commands after it.
    let by_image = ok_on(&["search", "--image", query, "--json", "-k", "5"]);
    let first = &lines(&by_image)[0];
    assert!(first["source"]
        .as_str()
        .unwrap()
        .ends_with(Path::new(query).file_name().unwrap().to_str().unwrap()));
    assert!(first["score"].as_f64().unwrap() > 0.999, "{by_image}");
    let by_id = ok_on(&["search", "--id", "1", "--json", "-k", "20"]);
    assert!(!hits(&by_id).iter().any(|(id, _)| *id == 1), "{by_id}");
    let filtered = ok_on(&[
        "search",
        "--id",
        "1",
        "--json",
        "--filter",
        &format!("character={}", names[1]),
    ]);
    assert_eq!(lines(&filtered).len(), 4, "{filtered}");

    let identify = ok_on(&["identify", query, "--json", "-k", "3"]);
    let identified: Vec<(String, String)> = lines(&identify)[0]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), score(&c["score"])))
        .collect();
    assert_eq!(identified.len(), 3, "{identify}");

    // A new character from two pictures of another sample character.
    let others = web_support::sample_gallery().join("train");
    let mut extra: Vec<_> = std::fs::read_dir(&others)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    extra.sort();
    let mut shots: Vec<String> = std::fs::read_dir(&extra[3])
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    shots.sort();
    let enrolled = ok_on(&["enroll", "newcomer", &shots[0], &shots[1]]);
    assert!(enrolled.contains("2 new images"), "{enrolled}");
    let similar_text = ok_on(&["similar-characters", "newcomer", "--json"]);
    let similar: Vec<(String, String)> = lines(&similar_text)
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), score(&c["score"])))
        .collect();
    assert_eq!(similar.len(), 3, "{similar_text}");

    let updated = ok_on(&["index", "update", "3", "--tag", "favourite"]);
    assert!(updated.contains("tags favourite"), "{updated}");
    let tagged = ok_on(&["search", "--id", "1", "--json", "--tag", "favourite"]);
    assert_eq!(hits(&tagged).iter().map(|h| h.0).collect::<Vec<_>>(), [3]);
    ok_on(&["index", "remove", "2"]);
    let compacted = ok_on(&["index", "compact"]);
    assert!(
        compacted.contains("purged 1 removed items; 13 live items"),
        "{compacted}"
    );
    let after = ok_on(&["search", "--id", "1", "--json", "-k", "20"]);
    assert!(!hits(&after).iter().any(|(id, _)| *id == 2), "{after}");
    // Copy review: a catalogued picture is its own exact copy.
    let audit = ok_on(&["audit", query, "--format", "json"]);
    let finding = &lines(&audit)[0];
    assert_eq!(
        (finding["verdict"].as_str(), finding["edit"][0].as_str()),
        (Some("copy"), Some("exact")),
        "{audit}"
    );
    let stats = ok_on(&["index", "stats"]);
    let live = stats
        .lines()
        .find_map(|l| l.strip_prefix("live:"))
        .map(str::trim);
    assert_eq!(live, Some("13"), "{stats}");

    Answers {
        searches: vec![hits(&by_image), hits(&by_id), hits(&after)],
        identified,
        similar,
    }
}

/// `index export --reembed-with` from the catalogue at `from` into a new one (`to`: the export's
/// destination arguments, `to_db`: the same catalogue as `--db` arguments) with another tiny
/// model: every item arrives, and a search there uses the new model by default.
fn reembeds(from: &[&str], to: &[&str], to_db: &[&str], dir: &Path, f: &Fixture) {
    let next = dir.join("next-model");
    std::fs::create_dir_all(&next).unwrap();
    let next = tiny_model(&next);
    let mut args = vec!["index"];
    args.extend(from);
    args.extend(["export", "--reembed-with", next.to_str().unwrap()]);
    args.extend(to);
    let out = ok(&args);
    assert!(out.contains("copied 13 items"), "{out}");
    assert!(out.contains("re-embedded with model"), "{out}");
    let mut search = vec!["search", "--image", f.query.as_str(), "--json", "-k", "1"];
    search.extend(to_db);
    let found = ok(&search);
    assert!(
        lines(&found)[0]["score"].as_f64().unwrap() > 0.999,
        "{found}"
    );
}

#[test]
fn catalogue_commands_on_a_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let f = fixture(tmp.path());
    commands_on(&["--db", db.to_str().unwrap()], &f);
    let next = tmp.path().join("next").display().to_string();
    reembeds(
        &["--db", db.to_str().unwrap()],
        &["--to", &next],
        &["--db", &next],
        tmp.path(),
        &f,
    );
    // A catalogue that was never created is an error with the command that creates one.
    let none = run(&[
        "search",
        "--id",
        "1",
        "--db",
        tmp.path().join("no").to_str().unwrap(),
    ]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("index add"));
}

#[cfg(feature = "milvus")]
#[test]
fn catalogue_commands_on_milvus_answer_as_on_a_folder() {
    let Some((milvus, tmp)) = web_support::milvus_lite() else {
        return;
    };
    let f = fixture(tmp.path());
    let folder = tmp.path().join("db");
    let embedded = commands_on(&["--db", folder.to_str().unwrap()], &f);
    let url = format!("{}/cli", milvus.uri().replace("http://", "milvus://"));
    let records = tmp.path().join("records");
    let db = ["--db", url.as_str(), "--records", records.to_str().unwrap()];
    let on_milvus = commands_on(&db, &f);
    assert_eq!(on_milvus, embedded);

    for (refused, what) in [
        (
            vec!["index", "rebuild"],
            "`index rebuild` works on an embedded catalogue folder",
        ),
        (
            vec!["index", "rebuild", "--reembed", "--model", "next"],
            "`index rebuild --reembed` re-embeds a catalogue folder in place",
        ),
    ] {
        let args: Vec<&str> = refused.iter().copied().chain(db).collect();
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(what), "{err}");
    }
    let next = format!("{url}_next");
    let next_records = tmp.path().join("next-records").display().to_string();
    reembeds(
        &db,
        &["--to", &next, "--to-records", &next_records],
        &["--db", &next, "--records", &next_records],
        tmp.path(),
        &f,
    );
    let no_records = run(&["index", "--db", &url, "stats"]);
    assert!(String::from_utf8_lossy(&no_records.stderr).contains("needs --records DIR"));
}
