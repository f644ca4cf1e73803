//! "Where is this screenshot from?" from an encoded screenshot: decode it once, describe it as it
//! came and mirrored (borders trimmed, as the copy descriptor's query views are), and ask the
//! catalogue for the best scenes (`CatalogLogic::search_scenes`), optionally only of one AniList id.
//! One function, so that the CLI, `POST /api/v1/search/scene` and the trace.moe-compatible
//! `/search` answer alike.

use crate::ingest::EmbedImages;
use animelens_index::{CatalogError, CatalogLogic, SceneHit, Storage};
use animelens_models::{CopyViews, EmbedError};

/// The label level trace.moe's `anilistID` filters on.
pub const ANILIST_LEVEL: &str = "anilist";

/// Why a screenshot could not be searched.
#[derive(Debug, thiserror::Error)]
pub enum SceneSearchError {
    /// The screenshot is not a usable image, or the network failed on it.
    #[error(transparent)]
    Image(#[from] EmbedError),
    /// The catalogue failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// The scenes found for one screenshot.
#[derive(Debug, Clone)]
pub struct SceneSearch {
    /// Best scene first.
    pub scenes: Vec<SceneHit>,
    /// Catalogue items the screenshot was compared with.
    pub searched: usize,
}

/// The `k` best scenes for the screenshot `bytes`, only of AniList id `anilist` when given.
pub fn search_screenshot(
    catalog: &dyn Storage,
    embedder: &dyn EmbedImages,
    bytes: &[u8],
    k: usize,
    anilist: Option<&str>,
) -> Result<SceneSearch, SceneSearchError> {
    let image = embedder.decode(bytes)?;
    let views = embedder
        .embed(vec![image], Some(CopyViews::Query))
        .pop()
        .expect("one prediction per image")?
        .copies;
    let scenes = catalog.search_scenes(&views, k, |item| match anilist {
        Some(id) => item.labels.get(ANILIST_LEVEL).map(String::as_str) == Some(id),
        None => true,
    })?;
    Ok(SceneSearch {
        scenes,
        searched: catalog.counts().live,
    })
}
