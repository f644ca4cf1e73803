//! The typed records the catalogue stores and returns: items, hits, events, the model tag, an
//! item's vectors as a model computes them, the calibrated copy verdict.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Identifier of an item; assigned by the catalogue, never reused (also after compaction).
pub type ItemId = u64;

/// The label level that names characters (the network's primary head).
pub const PRIMARY_LEVEL: &str = "character";

/// Which model produced the catalogue's embeddings. Vectors from different models are not comparable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelTag {
    /// The model card's weight fingerprint.
    pub fingerprint: String,
    /// The embedding dimension (1024 for GoogLeNet).
    pub dim: usize,
}

/// An item to add: metadata given by the caller plus its embedding.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewItem {
    /// File path or URL the image came from.
    pub source: String,
    /// Label per level, e.g. `"character" => "Gawr Gura"`, `"work" => "hololive"`.
    pub labels: BTreeMap<String, String>,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Hex content hash computed by the caller; exact duplicates are detected with it.
    /// An empty hash disables duplicate detection for this item.
    pub content_hash: String,
    /// Small JPEG thumbnail.
    pub thumbnail: Vec<u8>,
    /// The embedding (normalised by the catalogue if it is not already).
    pub vector: Vec<f32>,
    /// The copy descriptors of the picture's views, whole picture first (empty: none; see
    /// [`crate::Catalog::search_copies`]). All of one length, at most [`crate::VIEW_STRIDE`].
    pub copies: Vec<Vec<f32>>,
    /// Where in a video the picture is, for a video frame.
    pub frame: Option<VideoFrame>,
}

/// Where a video frame item sits in its video: the scene it stands for, from `from` to `to`
/// seconds, and the time `at` of the stored frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoFrame {
    /// Hex SHA-256 of the video file: the video's identity.
    pub video: String,
    /// The video's file name.
    pub filename: String,
    /// Title given when the video was added (the file name by default).
    pub title: String,
    /// Episode given when the video was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episode: Option<String>,
    /// Start of the scene, seconds.
    pub from: f64,
    /// Time of the stored frame, seconds.
    pub at: f64,
    /// End of the scene, seconds.
    pub to: f64,
    /// Length of the video, seconds.
    pub duration: f64,
}

/// A stored item's metadata (the thumbnail and vectors live in their own trees; see
/// [`crate::Catalog::thumbnail`] and [`crate::Catalog::vector`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// The item's id.
    pub id: ItemId,
    /// File path or URL.
    pub source: String,
    /// Label per level.
    pub labels: BTreeMap<String, String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Hex content hash given at insertion.
    pub content_hash: String,
    /// Insertion time, milliseconds since the Unix epoch.
    pub added_at_ms: u64,
    /// Where in a video the picture is, for a video frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<VideoFrame>,
}

impl Item {
    /// The label at the primary level, if any.
    pub fn character(&self) -> Option<&str> {
        self.labels.get(PRIMARY_LEVEL).map(String::as_str)
    }
}

/// The result of adding one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddOutcome {
    /// The new id, or the id of the live item with the same content hash.
    pub id: ItemId,
    /// True when the item was an exact duplicate and nothing was written.
    pub duplicate: bool,
}

impl NewItem {
    /// The record this item is stored as, added at `added_at_ms` (id 0 until the store gives one).
    pub(crate) fn record(&self, added_at_ms: u64) -> Item {
        Item {
            id: 0,
            source: self.source.clone(),
            labels: self.labels.clone(),
            tags: self.tags.clone(),
            width: self.width,
            height: self.height,
            content_hash: self.content_hash.clone(),
            added_at_ms,
            frame: self.frame.clone(),
        }
    }
}

/// An item copied from another catalogue as it was: its id and time of adding are kept (see
/// [`crate::Storage::add_restored`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RestoredItem {
    /// The record, with its id.
    pub item: Item,
    /// The normalised embedding.
    pub vector: Vec<f32>,
    /// The thumbnail (empty: none).
    pub thumbnail: Vec<u8>,
    /// The copy descriptors of its views (empty: none).
    pub copies: Vec<Vec<f32>>,
}

/// A change to an item's metadata; `None` fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemUpdate {
    /// New labels (replace all levels).
    pub labels: Option<BTreeMap<String, String>>,
    /// New tags (replace all tags).
    pub tags: Option<Vec<String>>,
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The item's id.
    pub id: ItemId,
    /// Cosine similarity for searches; the strategy's score for recommendations and feeds.
    pub score: f32,
    /// The item's metadata.
    pub item: Item,
}

/// What a user did with an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The user looked at the item.
    View,
    /// The user liked the item.
    Like,
    /// The user disliked the item.
    Dislike,
}

/// One user event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The item concerned.
    pub item: ItemId,
    /// What happened.
    pub kind: EventKind,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The catalogue's calibrated copy verdict.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CopyVerdict {
    /// Normalised scores at or above this are copies.
    pub threshold: f32,
    /// The precision the threshold was chosen for.
    pub precision: f32,
    /// The recall the calibration measured at that threshold.
    pub recall: f32,
}

impl CopyVerdict {
    /// Whether a normalised score is a copy.
    pub fn is_copy(&self, score: f32) -> bool {
        score >= self.threshold
    }
}

/// An item's vectors as a model computes them: the embedding and the copy descriptors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemVectors {
    /// The new embedding.
    pub vector: Vec<f32>,
    /// The new copy descriptors of its views (empty: none).
    pub copies: Vec<Vec<f32>>,
}

impl From<Vec<f32>> for ItemVectors {
    fn from(vector: Vec<f32>) -> Self {
        Self {
            vector,
            copies: Vec::new(),
        }
    }
}
