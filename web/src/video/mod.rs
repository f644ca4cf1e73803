//! Video: decoding with the `ffmpeg` program ([`ffmpeg`]), choosing the frames worth keeping
//! ([`scenes`]), turning a video into scenes embedded in batches while it decodes ([`sampling`]), finding the scene a screenshot comes from ([`scene_search`]),
//! and the character timeline of a video ([`recognise`], [`timeline`]). Ingesting a video's
//! scenes into the catalogue is the ingest pipeline's job (`crate::ingest::ingest_video`); scene
//! search is the catalogue's (`CatalogLogic::search_scenes`).

pub mod ffmpeg;
pub mod recognise;
pub mod sampling;
pub mod scene_search;
pub mod scenes;
pub mod timeline;

pub use ffmpeg::{VideoError, VideoInfo};
pub use recognise::{recognise_video, Recognition};
pub use sampling::{embedded_scenes, EmbeddedScene, SamplingReport, FRAME_SIDE};
pub use scene_search::{search_screenshot, SceneSearch, SceneSearchError, ANILIST_LEVEL};
pub use timeline::{TimelineFormat, TimelineSegment};
