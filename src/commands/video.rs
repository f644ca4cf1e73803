//! `animelens video add|search|recognise`: videos into the catalogue (each kept scene one item,
//! through the one ingest pipeline), "where is this screenshot from?" over them, and a video's
//! character timeline as JSON, CSV or WebVTT. Progress bars over video time.

use super::location::{close, CatalogPlace};
use super::model_choice::{open_with_model, Missing};
use animelens_web::ingest::{ingest_video, VideoSource};
use animelens_web::video::timeline::{to_csv, to_webvtt};
use animelens_web::video::{recognise_video, search_screenshot, ANILIST_LEVEL};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `animelens video` subcommands.
#[derive(Subcommand, Debug)]
pub enum VideoCommand {
    /// Decode videos, keep a frame per scene (at most a second apart) and add each as an item.
    Add(AddArgs),
    /// Find the video and time a screenshot comes from.
    Search(SearchArgs),
    /// The timeline of which known character is on screen when.
    Recognise(RecogniseArgs),
}

/// Where the catalogue and model are.
#[derive(Args, Debug)]
pub struct CatalogArgs {
    #[command(flatten)]
    place: CatalogPlace,
    /// Checkpoint (default: the catalogue's own model, else the shipped demo model).
    #[arg(long)]
    model: Option<PathBuf>,
}

/// `animelens video add` options.
#[derive(Args, Debug)]
pub struct AddArgs {
    /// Video files (any container and codec ffmpeg reads).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Title of the videos (default: each file's name).
    #[arg(long)]
    title: Option<String>,
    /// Episode (with one file).
    #[arg(long)]
    episode: Option<String>,
    /// AniList id of the work (searchable with trace.moe's `anilistID`).
    #[arg(long)]
    anilist_id: Option<u64>,
    /// Tag given to every frame (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    #[command(flatten)]
    catalog: CatalogArgs,
}

/// `animelens video search` options.
#[derive(Args, Debug)]
pub struct SearchArgs {
    /// The screenshot.
    image: PathBuf,
    /// Scenes listed.
    #[arg(long, default_value_t = 5)]
    k: usize,
    /// Only scenes of this AniList id.
    #[arg(long)]
    anilist_id: Option<u64>,
    #[command(flatten)]
    catalog: CatalogArgs,
}

/// Timeline formats.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Format {
    /// A JSON document with the figures.
    Json,
    /// CSV: from,to,character,confidence,scenes.
    Csv,
    /// WebVTT subtitles.
    Vtt,
}

/// `animelens video recognise` options.
#[derive(Args, Debug)]
pub struct RecogniseArgs {
    /// The video.
    file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// Write here instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
    #[command(flatten)]
    catalog: CatalogArgs,
}

/// Runs `animelens video ...`.
pub fn run(cmd: VideoCommand) -> Result<()> {
    match cmd {
        VideoCommand::Add(a) => run_add(a),
        VideoCommand::Search(a) => run_search(a),
        VideoCommand::Recognise(a) => run_recognise(a),
    }
}

/// A progress bar over a video's seconds.
fn time_bar(what: &str, seconds: f64) -> ProgressBar {
    let bar = ProgressBar::new(seconds.max(1.0).ceil() as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{pos}}/{{len}} s of video [{{elapsed}}<{{eta}}]"
        ))
        .expect("static template"),
    );
    bar
}

/// Length of a video for its progress bar (0 when ffprobe cannot tell).
fn duration_of(file: &std::path::Path) -> f64 {
    animelens_web::video::ffmpeg::probe(file).map_or(0.0, |i| i.duration)
}

fn run_add(args: AddArgs) -> Result<()> {
    if args.episode.is_some() && args.files.len() > 1 {
        bail!("--episode names one video's episode; add the files one at a time");
    }
    let db = args.catalog.place.location()?;
    let (catalog, model) = open_with_model(&db, args.catalog.model.as_deref(), Missing::Create)?;
    let mut labels = BTreeMap::new();
    if let Some(id) = args.anilist_id {
        labels.insert(ANILIST_LEVEL.to_string(), id.to_string());
    }
    let mut failed = 0usize;
    for file in &args.files {
        let source = VideoSource {
            path: file.clone(),
            filename: None,
            title: args.title.clone(),
            episode: args.episode.clone(),
            labels: labels.clone(),
            tags: args.tags.clone(),
        };
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let bar = time_bar(&format!("adding {name}"), duration_of(file));
        let added = ingest_video(&*catalog, &model, &source, &|t| bar.set_position(t as u64));
        bar.finish_and_clear();
        match added {
            Ok(a) => {
                let r = a.report;
                println!(
                    "added {name}: {} scenes from {} frames ({:.1} s of video); decoding {:.0} frames/s, \
                     embedding {:.1} scenes/s, {:.1}× real time overall",
                    a.ids.len(),
                    r.frames,
                    r.info.duration,
                    r.frames as f64 / r.decode_secs.max(1e-9),
                    r.scenes as f64 / r.embed_secs.max(1e-9),
                    r.info.duration / r.wall_secs.max(1e-9),
                );
            }
            Err(e) => {
                failed += 1;
                eprintln!("not added: {name}: {e}");
            }
        }
    }
    let live = catalog.stats()?.live;
    close(catalog)?;
    if failed == args.files.len() {
        bail!("none of the {} videos was added", args.files.len());
    }
    println!("{live} live items in {db}");
    Ok(())
}

fn run_search(args: SearchArgs) -> Result<()> {
    let db = args.catalog.place.location()?;
    let (catalog, model) = open_with_model(&db, args.catalog.model.as_deref(), Missing::Fail)?;
    let bytes = std::fs::read(&args.image)
        .with_context(|| format!("cannot read {}", args.image.display()))?;
    let anilist = args.anilist_id.map(|id| id.to_string());
    let found = search_screenshot(&*catalog, &model, &bytes, args.k, anilist.as_deref())
        .with_context(|| format!("cannot search with {}", args.image.display()))?;
    if found.scenes.is_empty() {
        println!("no video scenes in the catalogue match");
    }
    for s in &found.scenes {
        let f = &s.frame;
        println!(
            "{:.3}  {}{}  {:.2}–{:.2} s (frame at {:.2} s){}  item {}",
            s.similarity,
            f.title,
            f.episode
                .as_deref()
                .map(|e| format!(" episode {e}"))
                .unwrap_or_default(),
            f.from,
            f.to,
            f.at,
            if s.mirrored { ", mirrored" } else { "" },
            s.item
        );
    }
    Ok(())
}

fn run_recognise(args: RecogniseArgs) -> Result<()> {
    let db = args.catalog.place.location()?;
    let (catalog, model) = open_with_model(&db, args.catalog.model.as_deref(), Missing::Fail)?;
    let bar = time_bar("recognising", duration_of(&args.file));
    let recognition = recognise_video(&*catalog, &model, &args.file, &|t| {
        bar.set_position(t as u64)
    });
    bar.finish_and_clear();
    let r = recognition.with_context(|| format!("cannot recognise {}", args.file.display()))?;
    let text = match args.format {
        Format::Json => serde_json::to_string_pretty(&r)? + "\n",
        Format::Csv => to_csv(&r.segments),
        Format::Vtt => to_webvtt(&r.segments),
    };
    match &args.output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    eprintln!(
        "{} segments over {:.1} s: {} frames decoded at {:.0} frames/s, {} scenes embedded at {:.1}/s, \
         {:.0} video frames/s overall",
        r.segments.len(),
        r.duration,
        r.frames,
        r.decode_fps,
        r.scenes,
        r.embed_scenes_per_sec,
        r.frames_per_sec
    );
    Ok(())
}
