//! End-to-end tests of the video path with the shipped demo model, on clips ffmpeg makes at test
//! time from the committed sample pictures (no video is committed): three stills of three
//! characters, two seconds each. `video add` must find exactly three scenes with the right times,
//! refuse the same file twice and bad files clearly; a screenshot of the middle scene (also
//! mirrored and letterboxed) must find that scene by `video search`, `POST /api/v1/search/scene`
//! and the trace.moe-compatible `POST /search` (its response parsed into trace.moe's shapes);
//! `video recognise` must name the three characters in order (on a catalogue folder and, with
//! `--features milvus`, on Milvus), and the service must add an uploaded video.

mod web_support;

use image::{imageops, Rgb, RgbImage};
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use web_support::{ok, run, sample_gallery, small_gallery, Server, API_KEY};

/// Frame rate of the generated clips.
const FPS: f64 = 15.0;
/// Characters shown in the clip, in order, two seconds each.
const CAST: [&str; 3] = ["gura", "ina", "kiara"];

fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "animelens {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

/// The last training picture of sample character `name` (not among the few catalogued).
fn picture(name: &str) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(sample_gallery().join("train").join(name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.pop().unwrap()
}

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg is installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 6 s clip at [`FPS`]: the [`CAST`]'s pictures, two seconds each, 320×240, H.264 (or MPEG-4).
fn clip(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let mut args: Vec<String> = Vec::new();
    for who in CAST {
        args.extend(["-loop", "1", "-t", "2", "-i"].map(String::from));
        args.push(picture(who).display().to_string());
    }
    let scaled: String = (0..CAST.len())
        .map(|i| format!("[{i}]scale=320:240,setsar=1,fps={FPS}[v{i}];"))
        .collect();
    let inputs: String = (0..CAST.len()).map(|i| format!("[v{i}]")).collect();
    args.push("-filter_complex".into());
    args.push(format!(
        "{scaled}{inputs}concat=n={}:v=1:a=0,format=yuv420p[out]",
        CAST.len()
    ));
    args.extend(["-map", "[out]", "-c:v", "mpeg4", "-q:v", "4"].map(String::from));
    args.push(out.display().to_string());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ffmpeg(&refs);
    out
}

/// A screenshot of `video` at `time`, full size, as PNG.
fn screenshot(video: &Path, time: f64, out: &Path) -> PathBuf {
    ffmpeg(&[
        "-ss",
        &time.to_string(),
        "-i",
        video.to_str().unwrap(),
        "-frames:v",
        "1",
        out.to_str().unwrap(),
    ]);
    out.to_path_buf()
}

/// `shot` mirrored and letterboxed with black bars, as JPEG.
fn mirrored_letterboxed(shot: &Path, out: &Path) -> PathBuf {
    let img = imageops::flip_horizontal(&image::open(shot).unwrap().to_rgb8());
    let bar = img.height() / 6;
    let mut boxed = RgbImage::from_pixel(img.width(), img.height() + 2 * bar, Rgb([0, 0, 0]));
    imageops::replace(&mut boxed, &img, 0, bar as i64);
    boxed.save(out).unwrap();
    out.to_path_buf()
}

/// `args` followed by the catalogue's `db` arguments (`--db DIR`, or `--db milvus://… --records DIR`).
fn on(db: &[String], args: &[&str]) -> Vec<String> {
    args.iter()
        .map(|a| a.to_string())
        .chain(db.iter().cloned())
        .collect()
}

fn ok_on(db: &[String], args: &[&str]) -> String {
    let args = on(db, args);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn fails_on(db: &[String], args: &[&str]) -> String {
    let args = on(db, args);
    fails(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Fills the catalogue at `db` with a few pictures of each sample character (the recognition
/// needs centroids).
fn catalogue(tmp: &Path, db: &[String]) {
    let gallery = small_gallery(&tmp.join("gallery"), 20, 3);
    ok_on(db, &["index", "add", gallery.to_str().unwrap()]);
}

/// Scene times of `video search` lines: `similarity title episode E  FROM–TO s ...`.
fn first_scene(out: &str) -> (f64, f64) {
    let line = out.lines().next().unwrap_or_default();
    let range = line
        .split_whitespace()
        .find(|w| w.contains('–'))
        .unwrap_or_else(|| panic!("no time range in {out:?}"));
    let (from, to) = range.split_once('–').unwrap();
    (from.parse().unwrap(), to.parse().unwrap())
}

/// `near(a, b)`: within one frame of the clip.
fn near(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1.0 / FPS + 1e-6
}

#[test]
fn a_clip_is_indexed_by_scene_and_a_screenshot_finds_its_time() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db").display().to_string();
    clip_in_catalogue(tmp.path(), &["--db".into(), db.clone()]);
    reembeds(tmp.path(), &db);
}

/// The same on a catalogue whose vectors and copy descriptors are in Milvus.
#[cfg(feature = "milvus")]
#[test]
fn a_clip_is_indexed_by_scene_and_a_screenshot_finds_its_time_on_milvus() {
    let Some((milvus, tmp)) = web_support::milvus_lite() else {
        return;
    };
    let url = format!("{}/video", milvus.uri().replace("http://", "milvus://"));
    let records = tmp.path().join("records").display().to_string();
    clip_in_catalogue(
        tmp.path(),
        &["--db".into(), url, "--records".into(), records],
    );
}

/// Adds a generated clip to the catalogue at `db` and checks scene search and recognition on it.
fn clip_in_catalogue(tmp: &Path, db: &[String]) {
    catalogue(tmp, db);
    let video = clip(tmp, "episode.mp4");
    let added = ok_on(
        db,
        &[
            "video",
            "add",
            "--title",
            "Sample Show",
            "--episode",
            "3",
            "--anilist-id",
            "21",
            video.to_str().unwrap(),
        ],
    );
    assert!(added.contains("added episode.mp4: 3 scenes"), "{added}");

    // The same file again is refused, and nothing more is added.
    let again = fails_on(db, &["video", "add", video.to_str().unwrap()]);
    assert!(again.contains("already added (3 scenes)"), "{again}");

    let shot = screenshot(&video, 3.0, &tmp.join("shot.png"));
    let edited = mirrored_letterboxed(&shot, &tmp.join("edited.jpg"));
    for query in [&shot, &edited] {
        let out = ok_on(
            db,
            &["video", "search", "--k", "3", query.to_str().unwrap()],
        );
        assert!(out.starts_with(|c: char| c.is_ascii_digit()), "{out}");
        assert!(
            out.lines()
                .next()
                .unwrap()
                .contains("Sample Show episode 3"),
            "{out}"
        );
        let (from, to) = first_scene(&out);
        assert!(near(from, 2.0) && near(to, 4.0), "{out}");
    }
    let mirrored = ok_on(db, &["video", "search", edited.to_str().unwrap()]);
    assert!(
        mirrored.lines().next().unwrap().contains("mirrored"),
        "{mirrored}"
    );

    // Recognition names the cast in order, and writes subtitles.
    let out = ok_on(db, &["video", "recognise", video.to_str().unwrap()]);
    let timeline: Value = serde_json::from_str(&out).unwrap();
    let named: Vec<&str> = timeline["segments"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["character"].as_str())
        .collect();
    assert_eq!(named, CAST, "{timeline}");
    assert_eq!(timeline["frames"].as_u64(), Some(90), "{timeline}");
    let vtt = ok_on(
        db,
        &[
            "video",
            "recognise",
            "--format",
            "vtt",
            video.to_str().unwrap(),
        ],
    );
    assert!(
        vtt.starts_with("WEBVTT\n\n1\n00:00:00.000 --> 00:00:02.0"),
        "{vtt}"
    );
    assert!(vtt.contains("gura ("), "{vtt}");
}

/// Switching the folder catalogue `db` to another model re-embeds the frames from the video at
/// their times; none is lost.
fn reembeds(tmp: &Path, db: &str) {
    let tiny = web_support::tiny_model(tmp);
    let out = run(&[
        "index",
        "--db",
        db,
        "rebuild",
        "--reembed",
        "--model",
        tiny.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("removed item"), "{stderr}");
    assert!(
        stdout.contains("removed 0 items that could not be re-embedded"),
        "{stdout}"
    );
}

#[test]
fn bad_videos_are_refused_clearly_and_add_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db").display().to_string();
    let missing = fails(&["video", "add", "--db", &db, "/nonexistent/ep1.mp4"]);
    assert!(missing.contains("ep1.mp4 does not exist"), "{missing}");
    let text = tmp.path().join("notes.mp4");
    std::fs::write(&text, "this is not a video").unwrap();
    let out = fails(&["video", "add", "--db", &db, text.to_str().unwrap()]);
    assert!(
        out.contains("notes.mp4") && out.contains("decoded"),
        "{out}"
    );
    let audio = tmp.path().join("song.m4a");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=1",
        audio.to_str().unwrap(),
    ]);
    let out = fails(&["video", "add", "--db", &db, audio.to_str().unwrap()]);
    assert!(out.contains("song.m4a has no video stream"), "{out}");
    let video = clip(tmp.path(), "whole.mp4");
    let bytes = std::fs::read(&video).unwrap();
    let cut = tmp.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = fails(&["video", "add", "--db", &db, cut.to_str().unwrap()]);
    assert!(out.contains("cut.mp4") && out.contains("decoded"), "{out}");
    assert!(
        !out.contains(tmp.path().to_str().unwrap()),
        "names no server path: {out}"
    );
}

/// trace.moe's response, as its clients read it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct TraceResponse {
    frame_count: u64,
    error: String,
    result: Vec<TraceResult>,
}

/// One trace.moe result.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct TraceResult {
    anilist: u64,
    filename: String,
    episode: Option<u64>,
    from: f64,
    at: f64,
    to: f64,
    similarity: f64,
    video: String,
    image: String,
}

#[test]
fn the_service_adds_an_uploaded_video_and_answers_trace_moe_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/holoen");
    let gallery = small_gallery(&tmp.path().join("gallery"), 4, 2);
    let server = Server::start_on(&tmp.path().join("data"), &model, &gallery, None);
    let video = clip(tmp.path(), "ep7.mp4");
    let bytes = std::fs::read(&video).unwrap();
    let path = "/api/v1/videos?title=Show&episode=7&anilistID=99&filename=ep7.mp4";
    let headers = [("content-type", "video/mp4"), ("x-api-key", API_KEY)];
    let r = server.request("POST", path, &headers[..1], &bytes);
    assert_eq!(r.status, 401, "{}", r.error());
    let r = server.request("POST", path, &headers, &bytes);
    assert_eq!(r.status, 201, "{}", r.error());
    assert_eq!(r.json()["scenes"], 3);
    let r = server.request("POST", path, &headers, &bytes);
    assert_eq!(r.status, 409, "{}", r.error());
    let r = server.request("POST", path, &headers, b"not a video");
    assert_eq!(r.status, 422, "{}", r.error());

    let shot = std::fs::read(screenshot(&video, 5.0, &tmp.path().join("s.png"))).unwrap();
    let r = server.post_image("/api/v1/search/scene?k=2", "image/png", &shot);
    assert_eq!(r.status, 200, "{}", r.error());
    let scene = &r.json()["scenes"][0];
    assert_eq!(scene["filename"], "ep7.mp4", "{scene}");
    assert!(near(scene["from"].as_f64().unwrap(), 4.0), "{scene}");

    let r = server.post_image("/search?cutBorders&anilistID=99", "image/png", &shot);
    assert_eq!(r.status, 200, "{}", r.error());
    let parsed: TraceResponse = serde_json::from_slice(&r.body).expect("trace.moe's shape");
    assert_eq!(parsed.error, "");
    let best = &parsed.result[0];
    assert_eq!((best.anilist, best.episode), (99, Some(7)));
    assert!(near(best.from, 4.0) && near(best.to, 6.0), "{best:?}");
    assert!(best.similarity > 0.5 && best.similarity <= 1.0, "{best:?}");
    let image = best
        .image
        .split_once("/api/")
        .map(|(_, p)| format!("/api/{p}"))
        .unwrap();
    let r = server.request("GET", &image, &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/jpeg"));
    let clip_path = best
        .video
        .split_once("/api/")
        .map(|(_, p)| format!("/api/{p}"))
        .unwrap();
    let r = server.request("GET", &clip_path, &[], b"");
    assert_eq!(r.status, 200, "{}", r.error());
    assert_eq!(r.header("content-type"), Some("video/mp4"));

    let r = server.post_image("/search?anilistID=5", "image/png", &shot);
    let other: TraceResponse = serde_json::from_slice(&r.body).unwrap();
    assert!(other.result.is_empty(), "{other:?}");
    let r = server.request("GET", "/search?url=http://example.com/a.jpg", &[], b"");
    assert_eq!(r.status, 400);
    let refused: TraceResponse = serde_json::from_slice(&r.body).unwrap();
    assert!(refused.error.contains("disabled"), "{refused:?}");
    let (status, me) = server.get_json("/me");
    assert_eq!(status, 200);
    assert!(
        me["quota"].as_u64().is_some() && me["id"].is_string(),
        "{me}"
    );
}
