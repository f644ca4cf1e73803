//! `animelens-index`: the AnimeLens catalogue. It stores items (images' metadata, thumbnails and
//! L2-normalised embeddings) and answers similarity queries over them, without knowing the network
//! or HTTP.
//!
//! * sled is the source of truth ([`Catalog`] writes and flushes there first);
//! * an hnsw_rs graph (`DistDot`, M = 16, ef_construction = 200, ef_search = 64) is derived from it,
//!   rebuilt on open or reloaded from a dump tagged with the sled generation;
//! * removals are tombstones filtered during the graph walk; [`Catalog::compact`] purges them;
//! * filters on labels and tags fall back to exact search when they match few items;
//! * on top, for any [`Storage`]: per-character centroids and open-set classification
//!   ([`CatalogLogic::classify_by_centroid`]), recommendations ([`CatalogLogic::recommend`]), user
//!   feeds with MMR ([`CatalogLogic::feed`]) and near-duplicate checks
//!   ([`CatalogLogic::near_duplicates`]);
//! * [`Catalog::reembed`] switches a catalogue to a new model atomically (new vector set, then one
//!   transaction flips the set and the model tag);
//! * [`Storage`] is the seam between storage and the catalogue's logic ([`CatalogLogic`], written
//!   once for every storage); [`Catalog`] is the embedded storage; [`bench`] measures recall and speed.

mod ann;
pub mod bench;
mod catalog;
mod catalog_centroids;
#[cfg(test)]
mod catalog_tests;
mod centroids;
mod characters;
mod copy_index;
pub mod copy_verdict;
mod dump;
mod error;
mod feed;
mod filter;
mod int8_points;
pub mod limits;
mod logic;
mod migrate;
#[cfg(feature = "milvus")]
mod milvus;
mod recommend;
mod record;
mod reembed;
mod scenes;
mod storage;
mod store;
mod vector;

pub use ann::{GraphPrecision, HnswParams, MAX_CONNECTIONS};
pub use catalog::{
    Catalog, CatalogCounts, CatalogStats, CompactReport, Consistency, IndexOrigin, OpenOptions,
    DEFAULT_EXACT_THRESHOLD,
};
pub use characters::{
    open_set_threshold, Calibration, CharacterScore, Classification, DEFAULT_OPEN_SET_THRESHOLD,
};
pub use copy_index::{CopyMatch, VIEW_STRIDE};
pub use copy_verdict::{CalibrationViews, CopyFinding, CopyReview, MatchedItem};
pub use error::{CatalogError, Result};
pub use feed::mmr;
pub use filter::Filter;
pub use logic::CatalogLogic;
pub use migrate::{copy_catalogue, reembed_catalogue, CopyReport, Embed};
#[cfg(feature = "milvus")]
pub use milvus::{MilvusConfig, MilvusLite, MilvusStorage};
pub use recommend::{best_score, RecommendQuery, RecommendStrategy};
pub use record::{
    AddOutcome, CopyVerdict, Event, EventKind, Hit, Item, ItemId, ItemUpdate, ItemVectors,
    ModelTag, NewItem, RestoredItem, VideoFrame, PRIMARY_LEVEL,
};
pub use reembed::{ReembedItem, ReembedReport};
pub use scenes::{group_scenes, SceneHit, MERGE_MARGIN, MERGE_SECONDS};
pub use storage::Storage;
pub use vector::{dot, normalise, QuantizedVector, VectorSum};
