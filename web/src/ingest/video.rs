//! A video into the catalogue: its kept scenes (see `crate::video::sampling`) become one item
//! each — the scene's frame as the picture, with its video, episode and `from`/`at`/`to` seconds,
//! the embedding and the frame's copy descriptor — added in one transaction once the whole video
//! has decoded, so that a truncated or unreadable file adds nothing. The video's identity is the
//! SHA-256 of the file; its frames' content hashes derive from it, so re-adding the same file is
//! detected before decoding.

use super::embed::EmbedImages;
use super::picture::{items_of, ItemMeta, Picture};
use crate::video::{embedded_scenes, SamplingReport, VideoError};
use animelens_index::{CatalogError, ItemId, Storage, VideoFrame};
use animelens_models::CopyViews;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The tag every video frame item carries (so that image searches can leave frames out).
pub const VIDEO_TAG: &str = "video";

/// A video to add and what its frames are labelled with.
#[derive(Debug, Clone, Default)]
pub struct VideoSource {
    /// The video file.
    pub path: PathBuf,
    /// Its file name as the user knows it (default: the file's own name).
    pub filename: Option<String>,
    /// Its title (default: the file name).
    pub title: Option<String>,
    /// Its episode.
    pub episode: Option<String>,
    /// Labels every frame gets (e.g. `anilist`, `work`).
    pub labels: BTreeMap<String, String>,
    /// Tags every frame gets, besides [`VIDEO_TAG`].
    pub tags: Vec<String>,
}

/// What adding a video did.
#[derive(Debug, Clone)]
pub struct VideoAdded {
    /// Hex SHA-256 of the file.
    pub video: String,
    /// The ids of its scenes' items, in time order.
    pub ids: Vec<ItemId>,
    /// Decoding, sampling and embedding figures.
    pub report: SamplingReport,
}

/// Why a video could not be added.
#[derive(Debug, thiserror::Error)]
pub enum VideoIngestError {
    /// ffmpeg could not decode it.
    #[error(transparent)]
    Video(#[from] VideoError),
    /// The same file was added before.
    #[error(
        "{filename} was already added ({scenes} scenes); remove its items first to add it again"
    )]
    AlreadyAdded {
        /// The file name.
        filename: String,
        /// Live scenes of it.
        scenes: usize,
    },
    /// The video decoded to no frames.
    #[error("{filename} has no frames that could be decoded; check that it plays")]
    NoFrames {
        /// The file name.
        filename: String,
    },
    /// The catalogue refused the items.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// The content hash of a video's `index`-th scene.
pub fn scene_hash(video: &str, index: usize) -> String {
    format!("{video}:{index}")
}

/// Hex SHA-256 of a file, read in chunks.
pub fn video_identity(path: &Path) -> Result<String, VideoError> {
    let opened = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => VideoError::NotFound {
            file: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        },
        _ => VideoError::Io(e),
    });
    let mut file = opened?;
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        hasher.update(&chunk[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Adds the scenes of `source` to `catalog`; `progress` is told the video time reached.
pub fn ingest_video(
    catalog: &dyn Storage,
    embedder: &dyn EmbedImages,
    source: &VideoSource,
    progress: &dyn Fn(f64),
) -> Result<VideoAdded, VideoIngestError> {
    let filename = source.filename.clone().unwrap_or_else(|| {
        source
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let video = video_identity(&source.path)?;
    if catalog.find_by_hash(&scene_hash(&video, 0))?.is_some() {
        let scenes = (0..)
            .take_while(|i| matches!(catalog.find_by_hash(&scene_hash(&video, *i)), Ok(Some(_))))
            .count();
        return Err(VideoIngestError::AlreadyAdded { filename, scenes });
    }
    let (scenes, report) =
        embedded_scenes(&source.path, embedder, Some(CopyViews::Frame), progress)?;
    if scenes.is_empty() {
        return Err(VideoIngestError::NoFrames { filename });
    }
    let path = std::fs::canonicalize(&source.path).unwrap_or_else(|_| source.path.clone());
    let mut tags = vec![VIDEO_TAG.to_string()];
    tags.extend(source.tags.iter().cloned());
    let duration = if report.info.duration > 0.0 {
        report.info.duration
    } else {
        scenes.last().map_or(0.0, |s| s.scene.to)
    };
    let described = scenes
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let meta = ItemMeta {
                source: path.display().to_string(),
                labels: source.labels.clone(),
                tags: tags.clone(),
                frame: Some(VideoFrame {
                    video: video.clone(),
                    filename: filename.clone(),
                    title: source.title.clone().unwrap_or_else(|| filename.clone()),
                    episode: source.episode.clone(),
                    from: s.scene.from,
                    at: s.scene.at,
                    to: s.scene.to,
                    duration,
                }),
            };
            let picture = Picture::decoded(s.scene.frame, scene_hash(&video, i));
            (picture, meta, s.prediction)
        })
        .collect();
    let items = items_of(described).map_err(VideoError::Embed)?;
    let ids = catalog
        .add_batch(items)?
        .into_iter()
        .map(|o| o.id)
        .collect();
    Ok(VideoAdded { video, ids, report })
}
