//! Videos: add one (`POST /api/v1/videos`: the raw file as the body, or `?path=` under the
//! configured media folder), recognise the characters of one (`POST /api/v1/videos/recognise`),
//! find the scene a screenshot comes from (`POST /api/v1/search/scene`), and preview a scene (its
//! frame, a short clip cut by ffmpeg). An uploaded video is streamed to a temporary file under the
//! data folder (at most `max_video_bytes`), never held in memory, and removed afterwards.

use crate::api::types::ErrorBody;
use crate::error::ApiError;
use crate::ingest::{ingest_video, VideoIngestError, VideoSource};
use crate::state::AppState;
use crate::upload;
use crate::video::timeline::{to_csv, to_webvtt};
use crate::video::{ffmpeg, recognise_video, search_screenshot, Recognition, VideoError};
use actix_web::http::header;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use animelens_index::{ItemId, SceneHit};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use utoipa::{IntoParams, ToSchema};

/// Longest side of preview clips, pixels.
const CLIP_SIDE: u32 = 320;

/// Where a video to add or recognise is, and what its frames are labelled with.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VideoParams {
    /// A file under the server's media folder (relative path) instead of a body.
    pub path: Option<String>,
    /// Title (default: the file name).
    pub title: Option<String>,
    /// Episode.
    pub episode: Option<String>,
    /// AniList id of the work.
    #[serde(rename = "anilistID")]
    pub anilist_id: Option<u64>,
    /// Name of an uploaded file (for its title and file name).
    pub filename: Option<String>,
    /// Timeline format of `/videos/recognise`: `json` (default), `csv` or `vtt`.
    pub format: Option<String>,
}

/// Answer of `POST /videos`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VideoAddedView {
    /// Hex SHA-256 of the file.
    pub video: String,
    /// Scenes stored (one item each).
    pub scenes: usize,
    /// Their item ids, in time order.
    pub ids: Vec<ItemId>,
    /// Frames decoded.
    pub frames: usize,
    /// Length, seconds.
    pub duration: f64,
    /// Frames decoded per second of decoding.
    pub decode_fps: f64,
    /// Seconds of video indexed per wall-clock second.
    pub times_real_time: f64,
}

/// A video file the request names: under the media folder, or uploaded to a temporary file that
/// is removed when this is dropped.
struct VideoFile {
    path: PathBuf,
    name: String,
    upload: Option<tempfile::TempPath>,
}

impl VideoFile {
    /// Keeps an uploaded file (its scenes' clips are cut from it).
    fn keep(self) {
        if let Some(upload) = self.upload {
            if let Err(e) = upload.keep() {
                tracing::warn!(
                    "an uploaded video could not be kept, so its clips are unavailable: {e}"
                );
            }
        }
    }
}

/// Resolves `?path=` under the media folder, refusing anything that leaves it.
fn media_file(state: &AppState, relative: &str) -> Result<VideoFile, ApiError> {
    let Some(root) = state.settings.media_dir.as_deref() else {
        return Err(ApiError::BadRequest(
            "this server has no media folder configured, so `path` is disabled; upload the video \
             as the request body, or start the server with media_dir set"
                .into(),
        ));
    };
    let rel = Path::new(relative);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(ApiError::BadRequest(format!(
            "path {relative:?} must be relative to the media folder, without `..`"
        )));
    }
    let path = root.join(rel);
    if !path.is_file() {
        return Err(ApiError::NotFound(format!(
            "no file {relative:?} in the media folder; list the folder's files and give one of them"
        )));
    }
    Ok(VideoFile {
        name: rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path,
        upload: None,
    })
}

/// Streams the body to a file under `<data_dir>/videos` (removed again unless
/// [`VideoFile::keep`] is called), at most `max_video_bytes`.
async fn uploaded_file(
    state: &AppState,
    mut payload: web::Payload,
    name: Option<&str>,
) -> Result<VideoFile, ApiError> {
    let dir = state.settings.data_dir.join("videos");
    let limit = state.settings.max_video_bytes;
    let storage = |e: std::io::Error| {
        tracing::error!("cannot store an uploaded video: {e}");
        ApiError::Internal("the upload could not be stored on the server".into())
    };
    std::fs::create_dir_all(&dir).map_err(storage)?;
    let name = name
        .and_then(|n| Path::new(n).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "upload".to_string());
    let mut file = tempfile::Builder::new()
        .prefix("")
        .suffix(&format!("-{name}"))
        .tempfile_in(&dir)
        .map_err(storage)?;
    let mut size = 0usize;
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("the upload broke off: {e}")))?;
        size += chunk.len();
        if size > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        file.write_all(&chunk).map_err(storage)?;
    }
    if size == 0 {
        return Err(ApiError::BadRequest(
            "the request holds no video: send the file as the body, or give `path`".into(),
        ));
    }
    file.flush().map_err(storage)?;
    let path = file.into_temp_path();
    Ok(VideoFile {
        path: path.to_path_buf(),
        name,
        upload: Some(path),
    })
}

/// The video a request names: `?path=` or the body.
async fn video_of(
    state: &AppState,
    payload: web::Payload,
    params: &VideoParams,
) -> Result<VideoFile, ApiError> {
    match params.path.as_deref() {
        Some(p) => media_file(state, p),
        None => uploaded_file(state, payload, params.filename.as_deref()).await,
    }
}

/// Maps a video error to an answer (never naming server paths: the errors name files only).
fn video_error(e: VideoError) -> ApiError {
    match e {
        VideoError::FfmpegMissing | VideoError::Io(_) | VideoError::Embed(_) => {
            ApiError::Internal(e.to_string())
        }
        VideoError::NotFound { .. } => ApiError::NotFound(e.to_string()),
        VideoError::OutOfRange { .. } => ApiError::BadRequest(e.to_string()),
        VideoError::NoVideoStream { .. } | VideoError::Decode { .. } => {
            ApiError::BadImage(e.to_string())
        }
    }
}

/// Add a video: each kept scene becomes an item. Needs X-Api-Key.
#[utoipa::path(post, path = "/api/v1/videos", tag = "videos", params(VideoParams),
    request_body(content = Vec<u8>, description = "the video file as the raw body (any container/codec ffmpeg reads), or none with `path`", content_type = "video/*"),
    security(("api_key" = [])),
    responses((status = 201, body = VideoAddedView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[post("/videos")]
pub async fn add(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    params: web::Query<VideoParams>,
) -> Result<HttpResponse, ApiError> {
    state.authorize_write(&req)?;
    let file = video_of(&state, payload, &params).await?;
    let mut labels = BTreeMap::new();
    if let Some(id) = params.anilist_id {
        labels.insert(crate::video::ANILIST_LEVEL.to_string(), id.to_string());
    }
    let source = VideoSource {
        path: file.path.clone(),
        filename: Some(file.name.clone()),
        title: params.title.clone(),
        episode: params.episode.clone(),
        labels,
        tags: Vec::new(),
    };
    let (catalog, pool) = (state.catalog.clone(), state.pool.clone());
    let added = state
        .blocking(move || {
            let added = ingest_video(&*catalog, &pool, &source, &|_| {});
            if added.is_ok() {
                file.keep();
            }
            Ok(added)
        })
        .await?
        .map_err(|e| match e {
            VideoIngestError::Video(v) => video_error(v),
            VideoIngestError::AlreadyAdded { .. } => ApiError::Conflict(e.to_string()),
            VideoIngestError::NoFrames { .. } => ApiError::BadImage(e.to_string()),
            VideoIngestError::Catalog(c) => ApiError::Catalog(c),
        })?;
    let r = added.report;
    Ok(HttpResponse::Created().json(VideoAddedView {
        video: added.video,
        scenes: added.ids.len(),
        ids: added.ids,
        frames: r.frames,
        duration: r.info.duration,
        decode_fps: r.frames as f64 / r.decode_secs.max(1e-9),
        times_real_time: r.info.duration / r.wall_secs.max(1e-9),
    }))
}

/// Recognise the characters of a video: a timeline, scene by scene, with "unknown".
#[utoipa::path(post, path = "/api/v1/videos/recognise", tag = "videos", params(VideoParams),
    request_body(content = Vec<u8>, description = "the video file as the raw body, or none with `path`", content_type = "video/*"),
    responses((status = 200, body = Recognition), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[post("/videos/recognise")]
pub async fn recognise(
    state: web::Data<AppState>,
    payload: web::Payload,
    params: web::Query<VideoParams>,
) -> Result<HttpResponse, ApiError> {
    let format = params.format.as_deref().unwrap_or("json");
    if !["json", "csv", "vtt"].contains(&format) {
        return Err(ApiError::BadRequest(format!(
            "format {format:?} is not one of json, csv, vtt"
        )));
    }
    let file = video_of(&state, payload, &params).await?;
    let (catalog, pool) = (state.catalog.clone(), state.pool.clone());
    let recognition = state
        .blocking(move || {
            let r = recognise_video(&*catalog, &pool, &file.path, &|_| {});
            drop(file);
            Ok(r)
        })
        .await?
        .map_err(|e| match e {
            crate::video::recognise::RecogniseError::Video(v) => video_error(v),
            crate::video::recognise::RecogniseError::Catalog(c) => ApiError::Catalog(c),
        })?;
    Ok(match format {
        "csv" => HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .body(to_csv(&recognition.segments)),
        "vtt" => HttpResponse::Ok()
            .content_type("text/vtt; charset=utf-8")
            .body(to_webvtt(&recognition.segments)),
        _ => HttpResponse::Ok().json(recognition),
    })
}

/// Parameters of a scene search.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SceneParams {
    /// Scenes returned.
    #[serde(default = "default_k")]
    pub k: usize,
    /// Only scenes of this AniList id.
    #[serde(rename = "anilistID")]
    pub anilist_id: Option<u64>,
}

fn default_k() -> usize {
    5
}

/// One scene found.
#[derive(Debug, Serialize, ToSchema)]
pub struct SceneView {
    /// The best frame's item id.
    pub item: ItemId,
    /// Hex SHA-256 of the video.
    pub video: String,
    /// The video's title.
    pub title: String,
    /// The video's file name.
    pub filename: String,
    /// Episode, when known.
    pub episode: Option<String>,
    /// Start of the matched scene, seconds.
    pub from: f64,
    /// Time of the best frame, seconds.
    pub at: f64,
    /// End of the matched scene, seconds.
    pub to: f64,
    /// Cosine similarity of screenshot and frame, 0..1.
    pub similarity: f32,
    /// Whether the screenshot matched mirrored.
    pub mirrored: bool,
    /// The frame's image.
    pub image: String,
    /// A short clip of the scene.
    pub clip: String,
}

impl From<SceneHit> for SceneView {
    fn from(s: SceneHit) -> Self {
        SceneView {
            item: s.item,
            image: format!("/api/v1/scenes/{}/image", s.item),
            clip: format!("/api/v1/scenes/{}/clip", s.item),
            video: s.frame.video,
            title: s.frame.title,
            filename: s.frame.filename,
            episode: s.frame.episode,
            from: s.frame.from,
            at: s.frame.at,
            to: s.frame.to,
            similarity: s.similarity,
            mirrored: s.mirrored,
        }
    }
}

/// Answer of `POST /search/scene`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SceneSearchView {
    /// Catalogue items compared.
    pub searched: usize,
    /// Best scene first, grouped by video and time range.
    pub scenes: Vec<SceneView>,
}

/// Runs a scene search for one screenshot on the blocking pool (the one library call).
pub async fn find_scenes(
    state: &AppState,
    image: web::Bytes,
    k: usize,
    anilist: Option<u64>,
) -> Result<crate::video::SceneSearch, ApiError> {
    let k = state.check_k(k)?;
    let (catalog, pool) = (state.catalog.clone(), state.pool.clone());
    state
        .blocking(move || {
            let anilist = anilist.map(|id| id.to_string());
            search_screenshot(&*catalog, &pool, &image, k, anilist.as_deref()).map_err(
                |e| match e {
                    crate::video::SceneSearchError::Image(e) => ApiError::from_embed(e, 0, 1),
                    crate::video::SceneSearchError::Catalog(c) => ApiError::Catalog(c),
                },
            )
        })
        .await
}

/// Where is this screenshot from? Scenes of the catalogue's videos, mirror- and border-robust.
#[utoipa::path(post, path = "/api/v1/search/scene", tag = "videos", params(SceneParams),
    request_body(content = Vec<u8>, description = "the screenshot (raw body or multipart part `image`)", content_type = "image/*"),
    responses((status = 200, body = SceneSearchView), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
#[post("/search/scene")]
pub async fn search_scene(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    params: web::Query<SceneParams>,
) -> Result<HttpResponse, ApiError> {
    let upload = upload::read(&req, payload, state.upload_limits()).await?;
    let image = upload.all_images().remove(0);
    let found = find_scenes(&state, image, params.k, params.anilist_id).await?;
    Ok(HttpResponse::Ok().json(SceneSearchView {
        searched: found.searched,
        scenes: found.scenes.into_iter().map(SceneView::from).collect(),
    }))
}

/// The video frame item `id` and its video file.
async fn scene_item(
    state: &AppState,
    id: ItemId,
) -> Result<(animelens_index::Item, animelens_index::VideoFrame), ApiError> {
    let item = state
        .catalog(move |cat| cat.get(id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no item {id}")))?;
    let frame = item
        .frame
        .clone()
        .ok_or_else(|| ApiError::NotFound(format!("item {id} is not a video frame")))?;
    Ok((item, frame))
}

/// A scene's stored frame (JPEG).
#[utoipa::path(get, path = "/api/v1/scenes/{id}/image", tag = "videos",
    params(("id" = u64, Path, description = "frame item id")),
    responses((status = 200, content_type = "image/jpeg", body = Vec<u8>), (status = 404, body = ErrorBody)))]
#[get("/scenes/{id}/image")]
pub async fn scene_image(
    state: web::Data<AppState>,
    id: web::Path<ItemId>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    scene_item(&state, id).await?;
    let jpeg = state
        .catalog(move |cat| cat.thumbnail(id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("item {id} has no frame image")))?;
    Ok(HttpResponse::Ok()
        .content_type("image/jpeg")
        .insert_header((header::CACHE_CONTROL, "max-age=86400"))
        .body(jpeg))
}

/// A short MP4 clip of a scene (at most 10 s), cut from its video by ffmpeg.
#[utoipa::path(get, path = "/api/v1/scenes/{id}/clip", tag = "videos",
    params(("id" = u64, Path, description = "frame item id")),
    responses((status = 200, content_type = "video/mp4", body = Vec<u8>), (status = 404, body = ErrorBody)))]
#[get("/scenes/{id}/clip")]
pub async fn scene_clip(
    state: web::Data<AppState>,
    id: web::Path<ItemId>,
) -> Result<HttpResponse, ApiError> {
    let (item, frame) = scene_item(&state, id.into_inner()).await?;
    let path = PathBuf::from(&item.source);
    if !path.is_file() {
        return Err(ApiError::NotFound(format!(
            "the video of this scene ({}) is no longer on the server, so no clip can be cut; the \
             frame image is still at its image link",
            frame.filename
        )));
    }
    let clip = state
        .blocking(move || {
            ffmpeg::cut_clip(&path, frame.from, frame.to, CLIP_SIDE).map_err(video_error)
        })
        .await?;
    Ok(HttpResponse::Ok().content_type("video/mp4").body(clip))
}
