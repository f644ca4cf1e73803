//! A video as embedded scenes: ffmpeg decodes every frame on one thread, the scene sampler keeps
//! the frames worth storing, and the kept frames are embedded in batches on the caller's thread
//! while decoding goes on (ffmpeg would otherwise stall on a full pipe). Decoding and embedding
//! are timed apart, so that their rates can be reported separately.

use super::ffmpeg::{decode, VideoError, VideoInfo};
use super::scenes::{Scene, SceneSampler, SceneSettings};
use crate::ingest::EmbedImages;
use animelens_models::{CopyViews, Prediction};
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

/// Longest side, in pixels, of the frames decoded for sampling, embedding and thumbnails.
pub const FRAME_SIDE: u32 = 256;

/// Scenes embedded per network call.
const SCENE_BATCH: usize = 32;

/// Kept scenes waiting for the network before decoding pauses.
const SCENE_QUEUE: usize = 2 * SCENE_BATCH;

/// One kept scene and what the network says about its frame.
pub struct EmbeddedScene {
    /// The scene (its times and frame).
    pub scene: Scene,
    /// The frame's prediction (with copy descriptors when they were asked for).
    pub prediction: Prediction,
}

/// How a video's sampling went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingReport {
    /// What ffprobe said about the video.
    pub info: VideoInfo,
    /// Frames decoded (every frame).
    pub frames: usize,
    /// Scenes kept.
    pub scenes: usize,
    /// Seconds spent decoding and sampling (not waiting for the network).
    pub decode_secs: f64,
    /// Seconds spent in the network.
    pub embed_secs: f64,
    /// Wall-clock seconds of the whole run.
    pub wall_secs: f64,
}

/// Decodes `path`, keeps its scenes and embeds their frames (with the copy descriptors of
/// `copies` views); `progress` is told the video time reached after each batch. A decoding error
/// anywhere fails the whole video, so nothing is half-added by callers that store the scenes.
pub fn embedded_scenes(
    path: &Path,
    embedder: &dyn EmbedImages,
    copies: Option<CopyViews>,
    progress: &dyn Fn(f64),
) -> Result<(Vec<EmbeddedScene>, SamplingReport), VideoError> {
    let started = Instant::now();
    let frames = decode(path, FRAME_SIDE)?;
    let info = frames.info();
    let (tx, rx) = sync_channel::<Scene>(SCENE_QUEUE);
    let mut embedded = Vec::new();
    let mut embed_time = Duration::ZERO;
    let mut failure = None;
    let decoded = std::thread::scope(|scope| {
        let decoder = scope.spawn(move || {
            let mut sampler = SceneSampler::new(SceneSettings::default());
            let (mut count, mut waited) = (0usize, Duration::ZERO);
            let began = Instant::now();
            let mut send = |scene: Scene| {
                let t = Instant::now();
                let sent = tx.send(scene).is_ok();
                waited += t.elapsed();
                sent
            };
            for frame in frames {
                count += 1;
                if let Some(scene) = sampler.push(frame?) {
                    if !send(scene) {
                        break;
                    }
                }
            }
            if let Some(scene) = sampler.finish() {
                send(scene);
            }
            Ok::<_, VideoError>((count, began.elapsed().saturating_sub(waited)))
        });
        let mut batch = Vec::with_capacity(SCENE_BATCH);
        let mut flush = |batch: &mut Vec<Scene>| {
            if batch.is_empty() || failure.is_some() {
                batch.clear();
                return;
            }
            let t = Instant::now();
            let images = batch.iter().map(|s| s.frame.clone()).collect();
            let predictions = embedder.embed(images, copies);
            embed_time += t.elapsed();
            for (scene, prediction) in batch.drain(..).zip(predictions) {
                match prediction {
                    Ok(prediction) => embedded.push(EmbeddedScene { scene, prediction }),
                    Err(e) => failure = Some(e.to_string()),
                }
            }
            if let Some(last) = embedded.last() {
                progress(last.scene.to);
            }
        };
        for scene in rx {
            batch.push(scene);
            if batch.len() == SCENE_BATCH {
                flush(&mut batch);
            }
        }
        flush(&mut batch);
        decoder.join().expect("the decoding thread does not panic")
    });
    let (frames, decode_time) = decoded?;
    if let Some(message) = failure {
        return Err(VideoError::Embed(message));
    }
    let report = SamplingReport {
        info,
        frames,
        scenes: embedded.len(),
        decode_secs: decode_time.as_secs_f64(),
        embed_secs: embed_time.as_secs_f64(),
        wall_secs: started.elapsed().as_secs_f64(),
    };
    Ok((embedded, report))
}
