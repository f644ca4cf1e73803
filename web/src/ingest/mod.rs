//! The one ingest pipeline: every way a picture enters the catalogue — a folder or manifest
//! (`animelens index add`, the service's sample gallery), an upload (`POST /api/v1/items`), a video
//! frame (`animelens video add`, `POST /api/v1/videos`) — goes through here, so that all of them
//! make the same items: one thumbnail size, one content hash, the embedding and the copy
//! descriptors of the same views, and one calibration rule (a collection's `val` images calibrate
//! the open-set threshold before they are added; edited copies of a sample of the catalogue's
//! pictures calibrate the copy verdict).
//!
//! The pipeline embeds through [`EmbedImages`]: the network itself (the CLI) or the service's
//! inference pool (so that an ingest shares the workers and their queue with requests). Both take
//! decoded images, so nothing is encoded only to be decoded again.

mod calibration;
mod collection;
mod embed;
mod picture;
mod video;

pub use calibration::{calibrate_copies, COPY_CALIBRATION_SAMPLE};
pub use collection::{ingest_collection, Collection, IngestSummary, BATCH};
pub use embed::EmbedImages;
pub use picture::{embed_items, items_of, ItemMeta, Picture, THUMBNAIL_SIZE};
pub use video::{
    ingest_video, scene_hash, video_identity, VideoAdded, VideoIngestError, VideoSource, VIDEO_TAG,
};
