//! JSON shapes shared by several API groups: items, hits, filters, characters.

use animelens_index::{CharacterScore, Filter, Hit, Item, VideoFrame, PRIMARY_LEVEL};
use animelens_models::generalisation::ScoreCalibration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// An item's metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemView {
    /// The item's id.
    pub id: u64,
    /// File name or URL the image came from.
    pub source: String,
    /// Label per level, e.g. `{"character": "gura"}`.
    pub labels: BTreeMap<String, String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// SHA-256 of the image bytes.
    pub content_hash: String,
    /// When it was added, milliseconds since the Unix epoch.
    pub added_at_ms: u64,
    /// Where to fetch its thumbnail.
    pub thumbnail_url: String,
    /// For a video frame: its video, episode and `from`/`at`/`to` seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub frame: Option<VideoFrame>,
}

impl From<Item> for ItemView {
    fn from(i: Item) -> Self {
        ItemView {
            thumbnail_url: format!("/api/v1/items/{}/thumbnail", i.id),
            id: i.id,
            source: i.source,
            labels: i.labels,
            tags: i.tags,
            width: i.width,
            height: i.height,
            content_hash: i.content_hash,
            added_at_ms: i.added_at_ms,
            frame: i.frame,
        }
    }
}

/// One result: an item and its score.
#[derive(Debug, Serialize, ToSchema)]
pub struct HitView {
    /// Cosine similarity for searches; the strategy's score for recommendations and feeds.
    pub score: f32,
    /// For searches with a calibrated model: the probability that the hit shows the same
    /// character as the query, from the cosine (the same map for every query).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f32>,
    /// The item.
    pub item: ItemView,
}

/// A list of results, best first.
#[derive(Debug, Serialize, ToSchema)]
pub struct HitsResponse {
    /// The results.
    pub hits: Vec<HitView>,
}

impl HitsResponse {
    /// Wraps catalogue hits.
    pub fn new(hits: Vec<Hit>) -> Self {
        Self::searched(hits, None)
    }

    /// Wraps the hits of a cosine search, with each hit's calibrated confidence.
    pub fn searched(hits: Vec<Hit>, similarity: Option<ScoreCalibration>) -> Self {
        HitsResponse {
            hits: hits
                .into_iter()
                .map(|h| HitView {
                    score: h.score,
                    confidence: similarity.map(|c| c.confidence(h.score)),
                    item: h.item.into(),
                })
                .collect(),
        }
    }
}

/// A character and its similarity.
#[derive(Debug, Serialize, ToSchema)]
pub struct CharacterScoreView {
    /// The character's name.
    pub name: String,
    /// Cosine between centroids (or between an image and the centroid).
    pub score: f32,
}

impl From<CharacterScore> for CharacterScoreView {
    fn from(c: CharacterScore) -> Self {
        CharacterScoreView {
            name: c.name,
            score: c.score,
        }
    }
}

/// Filter conditions in a query string, all ANDed.
#[derive(Debug, Default, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct FilterParams {
    /// Only items of this character.
    pub character: Option<String>,
    /// Only items with these labels: comma-separated `level:value` pairs, e.g. `work:hololive`.
    pub labels: Option<String>,
    /// Only items carrying all these comma-separated tags.
    pub tags: Option<String>,
}

impl FilterParams {
    /// The catalogue filter, or a message saying which pair is malformed.
    pub fn to_filter(&self) -> Result<Filter, String> {
        let mut filter = Filter::any();
        if let Some(c) = self.character.as_deref().filter(|c| !c.is_empty()) {
            filter = filter.label(PRIMARY_LEVEL, c);
        }
        for pair in split_list(self.labels.as_deref()) {
            let (level, value) = pair.split_once(':').ok_or_else(|| {
                format!(
                    "label filter {pair:?} is not `level:value`; write e.g. labels=work:hololive"
                )
            })?;
            filter = filter.label(level.trim(), value.trim());
        }
        for tag in split_list(self.tags.as_deref()) {
            filter = filter.tag(tag);
        }
        Ok(filter)
    }
}

/// A filter in a JSON body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterBody {
    /// Required label per level.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Required tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

impl From<FilterBody> for Filter {
    fn from(f: FilterBody) -> Self {
        Filter {
            labels: f.labels,
            tags: f.tags,
        }
    }
}

/// Non-empty trimmed entries of a comma-separated list.
pub fn split_list(list: Option<&str>) -> impl Iterator<Item = &str> {
    list.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// An error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What was wrong and what to do about it.
    pub error: String,
}
