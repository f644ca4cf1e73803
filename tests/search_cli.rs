//! End-to-end tests of the catalogue commands that need the network, driving the real binary on
//! the committed sample (`models/sample`) with a tiny model trained for one batch: `index add`,
//! `search`, `index remove`, `similar-characters`, `enroll`, `identify`, `index calibrate` and
//! `index rebuild --reembed`. The weights are nearly random, so the tests check structure and
//! invariants (an item finds itself first with cosine ≈ 1, removed items never return, filters
//! hold, duplicates and unreadable files are reported), not recognition quality.

mod web_support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use web_support::{ok, run};

fn sample(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/sample")
        .join(rel)
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A checkpoint trained for one batch at 64 px with `seed`, shared by the tests of this binary.
fn tiny_model(seed: u64) -> String {
    static MODELS: OnceLock<std::sync::Mutex<Vec<(u64, tempfile::TempDir)>>> = OnceLock::new();
    let mut models = MODELS.get_or_init(Default::default).lock().unwrap();
    if let Some((_, dir)) = models.iter().find(|(s, _)| *s == seed) {
        return dir.path().join("best").display().to_string();
    }
    let dir = tempfile::tempdir().unwrap();
    ok(&[
        "train",
        "--data",
        sample("holoen").to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
        "--input-size",
        "64",
        "--epochs",
        "1",
        "--max-batches",
        "1",
        "--batch-size",
        "8",
        "--seed",
        &seed.to_string(),
    ]);
    let best = dir.path().join("best").display().to_string();
    models.push((seed, dir));
    best
}

/// A fresh catalogue of the holoen sample (180 images, tagged `sample`) built with `model`.
fn holoen_catalog(dir: &Path, model: &str) -> String {
    let db = dir.join("db").display().to_string();
    let out = ok(&[
        "index",
        "--db",
        &db,
        "add",
        sample("holoen").to_str().unwrap(),
        "--model",
        model,
        "--tag",
        "sample",
    ]);
    assert!(out.contains("added 180 items"), "{out}");
    db
}

/// `index add` of the holoen sample into `db` with `model`; returns stdout.
fn add_holoen(db: &str, model: &str) -> String {
    ok(&[
        "index",
        "--db",
        db,
        "add",
        sample("holoen").to_str().unwrap(),
        "--model",
        model,
    ])
}

fn first_image(character: &str) -> PathBuf {
    let dir = sample("holoen/train").join(character);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    std::fs::canonicalize(&files[0]).unwrap()
}

fn search(db: &str, model: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["search", "--db", db, "--model", model, "--json"];
    args.extend_from_slice(extra);
    json_lines(&ok(&args))
}

#[test]
fn add_search_filter_remove() {
    let model = tiny_model(1);
    let dir = tempfile::tempdir().unwrap();
    let db = holoen_catalog(dir.path(), &model);
    let gura = first_image("gura");
    let gura_str = gura.to_str().unwrap();

    let hits = search(&db, &model, &["--image", gura_str, "-k", "5"]);
    assert_eq!(hits.len(), 5);
    assert_eq!(hits[0]["source"], gura_str, "an item finds itself first");
    assert!(hits[0]["score"].as_f64().unwrap() > 0.999);
    let scores: Vec<f64> = hits.iter().map(|h| h["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    let own_id = hits[0]["id"].as_u64().unwrap();

    // By id: the item itself is excluded. Filters hold, and a small filtered set is returned whole.
    let by_id = search(&db, &model, &["--id", &own_id.to_string(), "-k", "3"]);
    assert_eq!(by_id.len(), 3);
    assert!(by_id.iter().all(|h| h["id"].as_u64() != Some(own_id)));
    let filtered = search(
        &db,
        &model,
        &["--image", gura_str, "-k", "50", "--filter", "character=ame"],
    );
    assert_eq!(filtered.len(), 10, "the sample has 10 images of ame");
    assert!(filtered.iter().all(|h| h["labels"]["character"] == "ame"));
    let tagged = search(
        &db,
        &model,
        &["--image", gura_str, "-k", "200", "--tag", "split:val"],
    );
    assert_eq!(tagged.len(), 72);
    assert!(tagged
        .iter()
        .all(|h| h["tags"].as_array().unwrap().contains(&"split:val".into())));

    // Adding the same folder again writes nothing.
    let again = add_holoen(&db, &model);
    assert!(
        again.contains("added 0 items, skipped 180 exact duplicates"),
        "{again}"
    );

    // A removed item never comes back, not even for its own image.
    ok(&["index", "--db", &db, "remove", &own_id.to_string()]);
    let after = search(&db, &model, &["--image", gura_str, "-k", "200"]);
    assert_eq!(after.len(), 179);
    assert!(after.iter().all(|h| h["id"].as_u64() != Some(own_id)));
    let gone = run(&["search", "--db", &db, "--id", &own_id.to_string()]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no live item"));
}

#[test]
fn unreadable_files_are_reported_and_skipped() {
    let model = tiny_model(1);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("gura")).unwrap();
    std::fs::copy(first_image("gura"), data.join("gura/good.jpg")).unwrap();
    std::fs::write(data.join("gura/broken.jpg"), b"not an image").unwrap();
    let db = dir.path().join("db").display().to_string();
    let out = run(&[
        "index",
        "--db",
        &db,
        "add",
        data.to_str().unwrap(),
        "--model",
        &model,
    ]);
    assert!(out.status.success());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.contains("added 1 items"), "{stdout}");
    assert!(stdout.contains("1 unreadable"), "{stdout}");
    assert!(stderr.contains("broken.jpg"), "{stderr}");
}

#[test]
fn similar_characters_enroll_identify_calibrate() {
    let model = tiny_model(1);
    let dir = tempfile::tempdir().unwrap();
    let db = holoen_catalog(dir.path(), &model);

    let similar = json_lines(&ok(&[
        "similar-characters",
        "gura",
        "--db",
        &db,
        "-k",
        "4",
        "--json",
    ]));
    assert_eq!(similar.len(), 4);
    assert!(similar.iter().all(|c| c["name"] != "gura"));
    let unknown = run(&["similar-characters", "nobody", "--db", &db]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown character"));

    // Few-shot enrolment of a new character from six sprites.
    let pikachu: Vec<String> = std::fs::read_dir(sample("pokemon/images/025"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    let mut args = vec!["enroll", "pikachu", "--model", &model, "--db", &db];
    args.extend(pikachu.iter().map(String::as_str));
    let out = ok(&args);
    assert!(
        out.contains(&format!("{} new images", pikachu.len())),
        "{out}"
    );
    let similar = ok(&["similar-characters", "pikachu", "--db", &db, "-k", "2"]);
    assert_eq!(similar.lines().count(), 2);
    let filtered = search(
        &db,
        &model,
        &[
            "--image",
            &pikachu[0],
            "-k",
            "20",
            "--filter",
            "character=pikachu",
        ],
    );
    assert_eq!(filtered.len(), pikachu.len());

    // Calibration stores a threshold; identify answers a character only at or above it.
    let cal = ok(&[
        "index",
        "--db",
        &db,
        "calibrate",
        "--model",
        &model,
        "--data",
        sample("holoen").to_str().unwrap(),
    ]);
    assert!(cal.contains("open-set threshold"), "{cal}");
    let mut args = vec!["identify", "--model", &model, "--db", &db, "--json"];
    args.extend(pikachu.iter().map(String::as_str));
    let gura = first_image("gura").display().to_string();
    args.push(&gura);
    let answers = json_lines(&ok(&args));
    assert_eq!(answers.len(), pikachu.len() + 1);
    for a in &answers {
        let (score, threshold) = (
            a["score"].as_f64().unwrap(),
            a["threshold"].as_f64().unwrap(),
        );
        assert_ne!(threshold, 0.5, "the calibrated threshold is used");
        assert_eq!(a["character"].is_null(), score < threshold, "{a}");
        if !a["character"].is_null() {
            assert_eq!(a["character"], a["candidates"][0]["name"]);
        }
    }
}

#[test]
fn reembed_switches_the_model() {
    let (old, new) = (tiny_model(1), tiny_model(2));
    let dir = tempfile::tempdir().unwrap();
    let db = holoen_catalog(dir.path(), &old);
    let gura = first_image("gura").display().to_string();

    let refused = run(&["search", "--db", &db, "--model", &new, "--image", &gura]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("rebuild --reembed"));

    // An item whose source file disappears is re-embedded from its thumbnail.
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("pikachu")).unwrap();
    let sprite = data.join("pikachu/sprite.png");
    std::fs::copy(
        sample("pokemon/images/025/black-white__normal__25.png"),
        &sprite,
    )
    .unwrap();
    let add = [
        "index",
        "--db",
        &db,
        "add",
        data.to_str().unwrap(),
        "--model",
        &old,
    ];
    ok(&add);
    std::fs::remove_file(&sprite).unwrap();

    let out = ok(&[
        "index",
        "--db",
        &db,
        "rebuild",
        "--reembed",
        "--model",
        &new,
    ]);
    assert!(out.contains("re-embedded 181 items"), "{out}");
    assert!(out.contains("1 of them from their thumbnail"), "{out}");
    let hits = search(&db, &new, &["--image", &gura, "-k", "3"]);
    assert_eq!(hits[0]["source"], gura.as_str());
    assert!(hits[0]["score"].as_f64().unwrap() > 0.999);
    assert!(
        !run(&["search", "--db", &db, "--model", &old, "--image", &gura])
            .status
            .success()
    );
}

#[test]
fn manifest_levels_become_filters() {
    let model = tiny_model(1);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db").display().to_string();
    let manifest = sample("pokemon/manifest.csv").display().to_string();
    let out = ok(&[
        "index",
        "--db",
        &db,
        "add",
        &manifest,
        "--model",
        &model,
        "--labels",
        "character=name,work=generation,style=game",
        "--split-column",
        "split",
    ]);
    assert!(out.contains("added 36 items"), "{out}");
    let pikachu = sample("pokemon/images/025/black-white__normal__25.png");
    let hits = search(
        &db,
        &model,
        &[
            "--image",
            pikachu.to_str().unwrap(),
            "-k",
            "50",
            "--filter",
            "work=1",
            "--filter",
            "style=crystal",
        ],
    );
    assert!(!hits.is_empty());
    for h in &hits {
        assert_eq!(h["labels"]["work"], "1");
        assert_eq!(h["labels"]["style"], "crystal");
        assert!(h["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t.as_str().unwrap().starts_with("split:")));
    }
}

/// A copy of the holoen sample's `train/` folders only (no validation images).
fn train_only_sample(dir: &Path) -> PathBuf {
    let root = dir.join("train-only");
    for entry in std::fs::read_dir(sample("holoen/train")).unwrap() {
        let from = entry.unwrap().path();
        let to = root.join("train").join(from.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(&from).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    root
}

#[test]
fn commands_default_to_the_catalogues_model_and_add_calibrates_on_validation_images() {
    let model_dir = tempfile::tempdir().unwrap();
    let trained = PathBuf::from(tiny_model(3));
    // A private copy, so that the test can take it away later.
    let model = model_dir.path().join("tiny");
    for ext in ["safetensors", "json"] {
        std::fs::copy(trained.with_extension(ext), model.with_extension(ext)).unwrap();
    }
    let model = model.display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db").display().to_string();

    // The sample has val/ images: they calibrate the threshold before they are added.
    let added = add_holoen(&db, &model);
    assert!(added.contains("added 180 items"), "{added}");
    assert!(
        added.contains("calibrated on the 72 validation images"),
        "{added}"
    );

    // No --model: the catalogue's recorded model embeds the query, and identify uses the
    // calibrated threshold without a warning.
    let gura = first_image("gura").display().to_string();
    let hits = json_lines(&ok(&["search", "--db", &db, "--image", &gura, "--json"]));
    assert_eq!(hits[0]["source"], gura.as_str());
    let out = run(&["identify", "--db", &db, "--json", &gura]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("not calibrated"));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["threshold_calibrated"], true);

    // index update relabels an item: the character filter follows.
    let id = hits[0]["id"].to_string();
    let updated = ok(&[
        "index",
        "--db",
        &db,
        "update",
        &id,
        "--label",
        "character=relabelled",
        "--tag",
        "fixed",
    ]);
    assert!(updated.contains("character=relabelled"), "{updated}");
    let found = json_lines(&ok(&[
        "search",
        "--db",
        &db,
        "--id",
        &id,
        "--filter",
        "character=relabelled",
        "--json",
    ]));
    assert!(found.is_empty(), "the query item itself is not returned");
    let found = json_lines(&ok(&[
        "search",
        "--db",
        &db,
        "--image",
        &gura,
        "--filter",
        "character=relabelled",
        "--json",
    ]));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["tags"], serde_json::json!(["fixed"]));
    let nothing = run(&["index", "--db", &db, "update", &id]);
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("nothing to change"));

    // The recorded model gone: the demo model does not match, and the error asks for --model.
    std::fs::remove_file(PathBuf::from(&model).with_extension("safetensors")).unwrap();
    let out = run(&["search", "--db", &db, "--image", &gura]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--model") && err.contains("fingerprint"),
        "{err}"
    );

    // A collection without validation images leaves the threshold uncalibrated, and says so.
    let other = dir.path().join("other").display().to_string();
    let train_only = train_only_sample(dir.path());
    let out = run(&[
        "index",
        "--db",
        &other,
        "add",
        train_only.to_str().unwrap(),
        "--model",
        trained.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not calibrated"), "{err}");
    let out = run(&["identify", "--db", &other, &gura]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not calibrated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
