//! `animelens bench scenes --video EP.mp4`: the video path measured on one episode, in one run.
//! (1) Indexing: the sample gallery is added (for the characters), then the episode through the
//! one ingest pipeline — frames decoded, scenes kept, decode and embed rates apart, × real time.
//! (2) Recognition: `video recognise`'s rates on the same episode. (3) Scene search: screenshots
//! at random times, as they are and edited (mirror, letterbox, crop, caption, JPEG, downscale),
//! searched by the copy descriptor and, side by side, by trace.moe's kind of descriptor (an 8×8
//! colour layout, nearest stored frame). The episode's shot list (`EP.shots.csv` from
//! `make_episode.sh`: start, end, picture) is the truth: a hit is right when its frame lies in the
//! screenshot's shot (± one frame); the generator reuses pictures, so a hit on another shot of the
//! same picture — indistinguishable by construction — is counted apart.

use super::colour_layout::ColourLayout;
use super::embedding::{load_model, progress_bar};
use super::model_choice::DEFAULT_MODEL;
use animelens_index::{dot, Catalog, ModelTag, OpenOptions};
use animelens_models::copies::edits::Edit;
use animelens_models::data::Dataset;
use animelens_models::Embedder;
use animelens_web::ingest::{ingest_collection, ingest_video, Collection, VideoSource};
use animelens_web::video::ffmpeg::{frame_at, probe};
use animelens_web::video::{recognise_video, search_screenshot};
use anyhow::{Context, Result};
use clap::Args;
use image::RgbImage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `animelens bench scenes` options.
#[derive(Args, Debug)]
pub struct SceneBenchArgs {
    /// The episode (e.g. one made by `web/bench/make_episode.sh`).
    #[arg(long)]
    video: PathBuf,
    /// Checkpoint (default: the shipped demo model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Labelled pictures added first, for recognition's characters.
    #[arg(long, default_value = "models/sample/holoen")]
    gallery: PathBuf,
    /// Screenshots searched (each as it is and edited).
    #[arg(long, default_value_t = 100)]
    shots: usize,
    /// Seed of the screenshot times and edits.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The episode's shots, `start,end,picture` per line (default: VIDEO with `.shots.csv` for
    /// `.mp4`).
    #[arg(long)]
    shots_csv: Option<PathBuf>,
    /// Write the figures here as JSON too.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The edits screenshots are searched with (none first).
fn screenshot_edits() -> Vec<Option<Edit>> {
    vec![
        None,
        Some(Edit::Mirror),
        Some(Edit::Letterbox { bar: 0.12 }),
        Some(Edit::Crop { area: 0.8 }),
        Some(Edit::Caption { height: 0.15 }),
        Some(Edit::Jpeg { quality: 30 }),
        Some(Edit::Downscale { side: 320 }),
    ]
}

/// Figures of one edit.
#[derive(Debug, Serialize)]
struct EditFigures {
    edit: String,
    /// Top hit in the screenshot's shot.
    copy_descriptor_top1: f64,
    /// Top hit in the screenshot's shot or another shot of the same picture.
    copy_descriptor_top1_same_picture: f64,
    colour_layout_top1: f64,
    colour_layout_top1_same_picture: f64,
}

/// One shot of the episode.
struct Shot {
    start: f64,
    end: f64,
    picture: String,
}

/// Reads `start,end,picture` lines after a header.
fn read_shots(path: &Path) -> Result<Vec<Shot>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the shot list {}", path.display()))?;
    text.lines()
        .skip(1)
        .map(|line| {
            let mut parts = line.splitn(3, ',');
            let mut number =
                || -> Result<f64> { Ok(parts.next().context("a short line")?.trim().parse()?) };
            let (start, end) = (number()?, number()?);
            let picture = parts.next().context("a short line")?.to_string();
            Ok(Shot {
                start,
                end,
                picture,
            })
        })
        .collect::<Result<_>>()
        .with_context(|| format!("{} is not a start,end,picture list", path.display()))
}

/// How a hit at time `at` relates to the screenshot's shot: (same shot, same picture).
fn judge(shots: &[Shot], truth: usize, at: f64, slack: f64) -> (bool, bool) {
    let own = &shots[truth];
    if own.start - slack <= at && at < own.end + slack {
        return (true, true);
    }
    let other = shots.iter().find(|s| s.start <= at && at < s.end);
    (false, other.is_some_and(|s| s.picture == own.picture))
}

/// Everything measured.
#[derive(Debug, Serialize)]
struct Figures {
    video_seconds: f64,
    frames: usize,
    scenes: usize,
    index_decode_fps: f64,
    index_embed_scenes_per_sec: f64,
    index_times_real_time: f64,
    recognise_frames_per_sec: f64,
    recognise_decode_fps: f64,
    recognise_embed_scenes_per_sec: f64,
    shots: usize,
    search_ms: f64,
    edits: Vec<EditFigures>,
}

/// Runs the benchmark.
pub fn run(args: SceneBenchArgs) -> Result<()> {
    let model = load_model(args.model.as_deref().unwrap_or(Path::new(DEFAULT_MODEL)))?;
    let tmp = tempfile::tempdir()?;
    let tag = ModelTag {
        fingerprint: model.fingerprint(),
        dim: model.dim(),
    };
    let catalog = Catalog::open(tmp.path(), OpenOptions::new(tag))?;
    let dataset = Dataset::from_folders(&args.gallery)?;
    let bar = progress_bar(dataset.samples.len(), "adding the gallery");
    ingest_collection(
        &catalog,
        &model,
        &Collection::new(&dataset, &args.gallery, false),
        &|n| bar.inc(n as u64),
    )?;
    bar.finish_and_clear();

    let source = VideoSource {
        path: args.video.clone(),
        ..VideoSource::default()
    };
    let added = ingest_video(&catalog, &model, &source, &|_| {})?;
    let r = added.report;
    eprintln!(
        "indexed {:.0} s: {} frames decoded at {:.0} frames/s, {} scenes embedded at {:.1}/s, {:.1}× real time",
        r.info.duration,
        r.frames,
        r.frames as f64 / r.decode_secs,
        r.scenes,
        r.scenes as f64 / r.embed_secs,
        r.info.duration / r.wall_secs
    );
    let recognition = recognise_video(&catalog, &model, &args.video, &|_| {})?;
    eprintln!(
        "recognised at {:.0} video frames/s (decoding {:.0} frames/s, embedding {:.1} scenes/s)",
        recognition.frames_per_sec, recognition.decode_fps, recognition.embed_scenes_per_sec
    );

    let frames = catalog
        .live_ids()
        .into_iter()
        .filter_map(|id| {
            let item = catalog.get(id).ok()??;
            let frame = item.frame?;
            let thumb = catalog.thumbnail(id).ok()??;
            Some((frame, thumb))
        })
        .collect::<Vec<_>>();
    let thumbs: Vec<&[u8]> = frames.iter().map(|(_, t)| t.as_slice()).collect();
    let layouts: Vec<Vec<f32>> = ColourLayout
        .predict_batch(&thumbs, 1, None)
        .into_iter()
        .map(|p| p.map(|p| p.embedding).unwrap_or_default())
        .collect();

    let info = probe(&args.video)?;
    let slack = if info.fps > 0.0 { 1.0 / info.fps } else { 0.05 };
    let shots = read_shots(
        &args
            .shots_csv
            .clone()
            .unwrap_or_else(|| args.video.with_extension("shots.csv")),
    )?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let edits = screenshot_edits();
    // Per edit: [copy same shot, copy same picture, layout same shot, layout same picture].
    let mut right = vec![[0usize; 4]; edits.len()];
    let (mut searches, mut search_secs) = (0usize, 0.0f64);
    let bar = progress_bar(args.shots, "searching screenshots");
    for _ in 0..args.shots {
        let t = rng.random_range(0.5..(info.duration - 0.5).max(0.6));
        let Some(truth) = shots.iter().position(|s| s.start <= t && t < s.end) else {
            continue;
        };
        let shot = frame_at(&args.video, t, 1280).context("cannot take a screenshot")?;
        for (e, edit) in edits.iter().enumerate() {
            let img = match edit {
                Some(edit) => edit.apply(&shot, None, &mut rng),
                None => shot.clone(),
            };
            let png = png_bytes(&img)?;
            let began = Instant::now();
            let found = search_screenshot(&catalog, &model, &png, 1, None)?;
            search_secs += began.elapsed().as_secs_f64();
            searches += 1;
            if let Some(hit) = found.scenes.first() {
                let (shot_right, picture_right) = judge(&shots, truth, hit.frame.at, slack);
                right[e][0] += shot_right as usize;
                right[e][1] += picture_right as usize;
            }
            let q = ColourLayout
                .predict_batch(&[png.as_slice()], 1, None)
                .remove(0);
            if let Ok(q) = q {
                let best = layouts
                    .iter()
                    .enumerate()
                    .max_by(|a, b| dot(&q.embedding, a.1).total_cmp(&dot(&q.embedding, b.1)));
                if let Some((i, _)) = best {
                    let (shot_right, picture_right) = judge(&shots, truth, frames[i].0.at, slack);
                    right[e][2] += shot_right as usize;
                    right[e][3] += picture_right as usize;
                }
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let figures = Figures {
        video_seconds: r.info.duration,
        frames: r.frames,
        scenes: r.scenes,
        index_decode_fps: r.frames as f64 / r.decode_secs,
        index_embed_scenes_per_sec: r.scenes as f64 / r.embed_secs,
        index_times_real_time: r.info.duration / r.wall_secs,
        recognise_frames_per_sec: recognition.frames_per_sec,
        recognise_decode_fps: recognition.decode_fps,
        recognise_embed_scenes_per_sec: recognition.embed_scenes_per_sec,
        shots: args.shots,
        search_ms: 1000.0 * search_secs / searches.max(1) as f64,
        edits: edits
            .iter()
            .zip(&right)
            .map(|(edit, r)| {
                let share = |n: usize| n as f64 / args.shots.max(1) as f64;
                EditFigures {
                    edit: edit.map_or("none".into(), |e| e.name()),
                    copy_descriptor_top1: share(r[0]),
                    copy_descriptor_top1_same_picture: share(r[1]),
                    colour_layout_top1: share(r[2]),
                    colour_layout_top1_same_picture: share(r[3]),
                }
            })
            .collect(),
    };
    println!(
        "| screenshot edit | copy descriptor: right shot | … or same picture | colour layout (trace.moe's kind): right shot | … or same picture |"
    );
    println!("|---|---|---|---|---|");
    for e in &figures.edits {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            e.edit,
            e.copy_descriptor_top1,
            e.copy_descriptor_top1_same_picture,
            e.colour_layout_top1,
            e.colour_layout_top1_same_picture
        );
    }
    println!(
        "{} screenshots × {} edits, {:.1} ms per scene search; {} scenes from {} frames",
        args.shots,
        edits.len(),
        figures.search_ms,
        figures.scenes,
        figures.frames
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&figures)?)?;
    }
    Ok(())
}

/// A PNG of `img`, as a screenshot arrives.
fn png_bytes(img: &RgbImage) -> Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}
