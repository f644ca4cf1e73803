//! End-to-end tests of copyright review with the shipped demo model (the copy descriptor needs
//! trained weights): a catalogue of the committed holoen sample built by `index add`, its copy
//! threshold calibrated by `index calibrate-copies`, then an edited copy of a catalogued picture
//! (mirrored, cropped, letterboxed, re-compressed) and an unrelated picture (a Pokémon sprite)
//! reviewed by `animelens audit` (JSON and CSV) and by `POST /api/v1/audit` on the real server,
//! whose threshold its gallery ingest calibrated (on both storage backends).

mod web_support;

use image::{imageops, Rgb, RgbImage};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use web_support::{multipart, ok, sample_gallery, Server};

/// The first training picture of sample character `name`.
fn original(name: &str) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(sample_gallery().join("train").join(name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.remove(0)
}

/// `path` mirrored, letterboxed with black bars and saved as a JPEG of quality 60 in `dir` (each
/// edit alone, crops included, is measured by `animelens bench copies`).
fn edited_copy(path: &Path, dir: &Path) -> PathBuf {
    let img = image::open(path).unwrap().to_rgb8();
    let crop = imageops::flip_horizontal(&img);
    let bar = crop.height() / 5;
    let mut boxed = RgbImage::from_pixel(crop.width(), crop.height() + 2 * bar, Rgb([0, 0, 0]));
    imageops::replace(&mut boxed, &crop, 0, bar as i64);
    let out = dir.join("copy.jpg");
    let file = std::fs::File::create(&out).unwrap();
    image::codecs::jpeg::JpegEncoder::new_with_quality(file, 60)
        .encode_image(&boxed)
        .unwrap();
    out
}

fn unrelated() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/sample/pokemon/images/007/crystal__shiny__7.png")
}

fn file_name(source: &Value) -> String {
    Path::new(source.as_str().unwrap())
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn an_edited_copy_is_found_and_an_unrelated_picture_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let db = db.to_str().unwrap();
    ok(&[
        "index",
        "--db",
        db,
        "add",
        sample_gallery().to_str().unwrap(),
    ]);
    let calibrated = ok(&["index", "--db", db, "calibrate-copies", "--sample", "24"]);
    assert!(calibrated.contains("copy threshold"), "{calibrated}");

    let source = original("kiara");
    let copy = edited_copy(&source, tmp.path());
    let out = ok(&[
        "audit",
        "--db",
        db,
        "--format",
        "json",
        copy.to_str().unwrap(),
        unrelated().to_str().unwrap(),
        source.to_str().unwrap(),
    ]);
    let findings: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(findings.len(), 3, "{out}");
    let [copy_f, unrelated_f, exact_f] = [&findings[0], &findings[1], &findings[2]];
    assert_eq!(copy_f["verdict"], "copy", "{copy_f}");
    assert_eq!(copy_f["calibrated"], true);
    assert_eq!(
        file_name(&copy_f["matches"][0]["source"]),
        file_name(&Value::from(source.to_str().unwrap()))
    );
    let edit: Vec<&str> = copy_f["edit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        edit.contains(&"mirrored") && edit.contains(&"bordered"),
        "{edit:?}"
    );
    assert_eq!(unrelated_f["verdict"], "not_a_copy", "{unrelated_f}");
    assert!(unrelated_f["score"].as_f64() < copy_f["score"].as_f64());
    assert_eq!(exact_f["verdict"], "copy");
    assert_eq!(exact_f["edit"][0], "exact");

    let csv = ok(&[
        "audit",
        "--db",
        db,
        "--format",
        "csv",
        copy.to_str().unwrap(),
    ]);
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("upload,verdict,score"));
    assert!(lines.next().unwrap().contains(",copy,"));

    let broken = tmp.path().join("broken.jpg");
    std::fs::write(&broken, b"not an image").unwrap();
    let out = ok(&[
        "audit",
        "--db",
        db,
        "--format",
        "json",
        broken.to_str().unwrap(),
    ]);
    let finding: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(finding["verdict"], "error");
    assert!(
        finding["error"].as_str().unwrap().contains("decode"),
        "{finding}"
    );
}

#[test]
fn the_service_reviews_uploads_the_same_way() {
    service_reviews_uploads_on("");
}

/// The same review with the catalogue (and its copy descriptors) on Milvus.
#[cfg(feature = "milvus")]
#[test]
fn the_service_reviews_uploads_the_same_way_on_milvus() {
    let Some((milvus, _data)) = web_support::milvus_lite() else {
        return;
    };
    service_reviews_uploads_on(&web_support::milvus_settings(&milvus));
}

/// `POST /api/v1/audit` on a service whose TOML settings file holds `settings`.
fn service_reviews_uploads_on(settings: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/holoen");
    let config = tmp.path().join("serve.toml");
    std::fs::write(&config, settings).unwrap();
    let mut server = Server::start_on(
        &tmp.path().join("data"),
        &model,
        &sample_gallery(),
        Some(&config),
    );
    server.wait_for_log("copy threshold calibrated", Duration::from_secs(1));
    let source = original("gura");
    let copy = std::fs::read(edited_copy(&source, tmp.path())).unwrap();
    let other = std::fs::read(unrelated()).unwrap();
    let (content_type, body) = multipart(&[
        ("image", Some("copy.jpg"), &copy),
        ("image", Some("sprite.png"), &other),
    ]);
    let r = server.post_image("/api/v1/audit", &content_type, &body);
    assert_eq!(r.status, 200, "{}", r.error());
    let v = r.json();
    let findings = v["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 2);
    assert_eq!(findings[0]["upload"], "copy.jpg");
    assert_eq!(
        file_name(&findings[0]["matches"][0]["source"]),
        file_name(&Value::from(source.to_str().unwrap()))
    );
    assert!(
        findings[0]["score"].as_f64() > findings[1]["score"].as_f64(),
        "{v}"
    );
    let r = server.post_image("/api/v1/audit", "image/jpeg", b"not an image");
    assert_eq!(r.status, 422, "{}", r.error());
}
