//! "Where is this screenshot from?": scene search over the catalogue's video frames. A screenshot's
//! copy-descriptor views (as it came and mirrored, borders trimmed) are matched against the frames'
//! descriptors; the matching frames are grouped by video and time range and the groups ranked by
//! their best frame's similarity. Each frame item already stands for the scene the ingest kept it
//! for (`VideoFrame::from`..`to`: a static shot is one item), so only neighbours that match about
//! as well as the best — consecutive 1-second samples of one pan or slow shot, within
//! [`MERGE_SECONDS`] of each other and [`MERGE_MARGIN`] of the best similarity — join into one
//! result, as trace.moe merges the hits of its every-frame index; a neighbouring *different* shot
//! matches worse and stays a result of its own.

use crate::error::Result;
use crate::record::{Item, ItemId, VideoFrame};
use crate::storage::Storage;

/// Frame hits of one video at most this far apart (seconds) may be one scene.
pub const MERGE_SECONDS: f64 = 1.0;

/// ... when they match within this much cosine of the scene's best frame.
pub const MERGE_MARGIN: f32 = 0.03;

/// Frames fetched per scene asked for: other pictures and nearby frames of the same scene take
/// places among the nearest descriptors before the grouping.
const FETCH_PER_SCENE: usize = 8;

/// Fewest frames fetched, however few scenes are asked for.
const MIN_FETCH: usize = 64;

/// One matching scene.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneHit {
    /// The best-matching frame item.
    pub item: ItemId,
    /// The best frame's video metadata, with `from`/`to` widened to the whole merged scene.
    pub frame: VideoFrame,
    /// The video's source (its path when added from a file).
    pub source: String,
    /// The item's labels (e.g. `anilist`, `work`).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Cosine similarity of the best (screenshot view, frame) pair, clamped to [0, 1].
    pub similarity: f32,
    /// Whether the best match was the mirrored screenshot.
    pub mirrored: bool,
}

/// The `k` scenes whose frames best match a screenshot's copy-descriptor `views`, best first,
/// among the video frames that `keep` accepts (a label filter, say).
pub(crate) fn search_scenes<S: Storage + ?Sized>(
    catalog: &S,
    views: &[Vec<f32>],
    k: usize,
    keep: &dyn Fn(&Item) -> bool,
) -> Result<Vec<SceneHit>> {
    let fetch = (k * FETCH_PER_SCENE).max(MIN_FETCH);
    let found = catalog.search_copies(views, fetch)?;
    let frames = found.into_iter().filter_map(|(m, item)| {
        let frame = item.frame.clone()?;
        keep(&item).then_some(SceneHit {
            item: m.id,
            frame,
            source: item.source,
            labels: item.labels,
            similarity: m.similarity.clamp(0.0, 1.0),
            mirrored: m.query_view == 1,
        })
    });
    let mut scenes = group_scenes(frames);
    scenes.truncate(k);
    Ok(scenes)
}

/// Groups frame hits (any order) into scenes: a hit of the same video within [`MERGE_SECONDS`]
/// of a scene's range and [`MERGE_MARGIN`] of its best similarity joins it; the best hit names
/// the scene. Best scene first.
pub fn group_scenes(hits: impl IntoIterator<Item = SceneHit>) -> Vec<SceneHit> {
    let mut hits: Vec<SceneHit> = hits.into_iter().collect();
    hits.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
    let mut scenes: Vec<SceneHit> = Vec::new();
    for hit in hits {
        let near = scenes.iter_mut().find(|s| {
            s.frame.video == hit.frame.video
                && hit.similarity >= s.similarity - MERGE_MARGIN
                && hit.frame.from <= s.frame.to + MERGE_SECONDS
                && hit.frame.to + MERGE_SECONDS >= s.frame.from
        });
        match near {
            Some(scene) => {
                scene.frame.from = scene.frame.from.min(hit.frame.from);
                scene.frame.to = scene.frame.to.max(hit.frame.to);
            }
            None => scenes.push(hit),
        }
    }
    scenes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(video: &str, from: f64, to: f64, similarity: f32) -> SceneHit {
        SceneHit {
            item: (from * 10.0) as ItemId,
            frame: VideoFrame {
                video: video.into(),
                filename: format!("{video}.mp4"),
                title: video.into(),
                episode: None,
                from,
                at: from,
                to,
                duration: 100.0,
            },
            source: String::new(),
            labels: Default::default(),
            similarity,
            mirrored: false,
        }
    }

    #[test]
    fn neighbours_matching_as_well_merge_and_the_best_names_the_scene() {
        let scenes = group_scenes([
            hit("a", 11.0, 12.0, 0.89),
            hit("a", 12.0, 13.0, 0.9),
            hit("a", 13.0, 14.0, 0.6),
            hit("a", 40.0, 41.0, 0.8),
            hit("b", 12.0, 13.0, 0.7),
        ]);
        assert_eq!(scenes.len(), 4);
        assert_eq!(scenes[0].frame.video, "a");
        assert_eq!(scenes[0].similarity, 0.9);
        assert_eq!((scenes[0].frame.from, scenes[0].frame.to), (11.0, 13.0));
        assert_eq!(scenes[0].frame.at, 12.0);
        assert_eq!((scenes[1].frame.from, scenes[1].frame.to), (40.0, 41.0));
        assert_eq!(scenes[2].frame.video, "b");
        assert_eq!((scenes[3].frame.from, scenes[3].frame.to), (13.0, 14.0));
    }

    #[test]
    fn hits_further_apart_than_the_merge_window_stay_apart() {
        let scenes = group_scenes([hit("a", 0.0, 1.0, 0.9), hit("a", 2.5, 3.0, 0.9)]);
        assert_eq!(scenes.len(), 2);
    }
}
