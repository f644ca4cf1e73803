//! Frame-level character recognition: a video's kept scenes are embedded in batches while it
//! decodes, each scene's frame is named by the catalogue's open-set rule (nearest character
//! centroid, "unknown" below the calibrated threshold), and neighbouring scenes with the same
//! answer become one timeline segment. Nothing is stored.

use super::sampling::{embedded_scenes, SamplingReport};
use super::timeline::{merge_scenes, TimelineSegment};
use super::VideoError;
use crate::ingest::EmbedImages;
use animelens_index::{CatalogError, CatalogLogic, Storage};
use serde::Serialize;
use std::path::Path;

/// A video's character timeline and how fast it was made.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Recognition {
    /// The segments, in time order.
    pub segments: Vec<TimelineSegment>,
    /// Length of the video, seconds.
    pub duration: f64,
    /// Frames decoded.
    pub frames: usize,
    /// Scenes recognised.
    pub scenes: usize,
    /// Frames decoded per second of decoding.
    pub decode_fps: f64,
    /// Scenes embedded per second of network time.
    pub embed_scenes_per_sec: f64,
    /// Video frames handled per wall-clock second (decoding and recognition together).
    pub frames_per_sec: f64,
}

/// Why a video could not be recognised.
#[derive(Debug, thiserror::Error)]
pub enum RecogniseError {
    /// ffmpeg could not decode it.
    #[error(transparent)]
    Video(#[from] VideoError),
    /// The catalogue could not classify.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// Recognises the characters of `path` against `catalog`'s characters; `progress` is told the
/// video time reached.
pub fn recognise_video(
    catalog: &dyn Storage,
    embedder: &dyn EmbedImages,
    path: &Path,
    progress: &dyn Fn(f64),
) -> Result<Recognition, RecogniseError> {
    let (scenes, report) = embedded_scenes(path, embedder, None, progress)?;
    let mut answers = Vec::with_capacity(scenes.len());
    for s in &scenes {
        let c = catalog.classify_by_centroid(&s.prediction.embedding, 1)?;
        let confidence = c.candidates.first().map_or(0.0, |c| c.score);
        answers.push((s.scene.from, s.scene.to, c.label, confidence));
    }
    Ok(recognition(merge_scenes(answers), &report))
}

/// The recognition's figures from the sampling report.
fn recognition(segments: Vec<TimelineSegment>, report: &SamplingReport) -> Recognition {
    let per_sec = |n: usize, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    Recognition {
        duration: report
            .info
            .duration
            .max(segments.last().map_or(0.0, |s| s.to)),
        segments,
        frames: report.frames,
        scenes: report.scenes,
        decode_fps: per_sec(report.frames, report.decode_secs),
        embed_scenes_per_sec: per_sec(report.scenes, report.embed_secs),
        frames_per_sec: per_sec(report.frames, report.wall_secs),
    }
}
