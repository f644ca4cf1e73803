//! trace.moe's API, so that existing trace.moe clients (e.g. PyPI's `aiotracemoeapi` with a
//! `base_url`) work against AnimeLens: `GET|POST /search` (the screenshot as the raw body or a
//! multipart part `image`; `url=` is refused, as fetching URLs is disabled on this server;
//! `cutBorders` is accepted and always on; `anilistID` filters by the videos' `anilist` label;
//! `anilistInfo` answers an AniList object instead of the id) and `GET /me`. The response shapes
//! are trace.moe's: `{frameCount, error, result: [{anilist, filename, episode, from, at, to,
//! similarity, video, image}]}`, errors with an empty result and the message in `error`.

use super::videos::find_scenes;
use crate::error::ApiError;
use crate::state::AppState;
use crate::upload;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use animelens_index::SceneHit;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Results trace.moe answers.
const RESULTS: usize = 10;

/// Query parameters of `/search`.
#[derive(Debug, Default, Deserialize)]
pub struct TraceParams {
    /// An image address (refused: fetching is disabled here).
    pub url: Option<String>,
    /// Only this AniList id.
    #[serde(rename = "anilistID")]
    pub anilist_id: Option<String>,
    /// Present: `anilist` is an object.
    #[serde(rename = "anilistInfo")]
    pub anilist_info: Option<String>,
    // `cutBorders` (any value) is accepted and ignored: borders are always trimmed.
}

/// trace.moe's answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceResponse {
    /// Frames compared.
    pub frame_count: usize,
    /// Empty, or what went wrong.
    pub error: String,
    /// Best first.
    pub result: Vec<Value>,
}

/// An error in trace.moe's shape, with the status AnimeLens would give it.
fn trace_error(status: StatusCode, message: String) -> HttpResponse {
    HttpResponse::build(status).json(TraceResponse {
        frame_count: 0,
        error: message,
        result: Vec::new(),
    })
}

/// The episode as trace.moe gives it: a number when it is one, else the text, else null.
fn episode_value(episode: Option<&str>) -> Value {
    match episode {
        None => Value::Null,
        Some(e) => e
            .parse::<u64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(e)),
    }
}

/// One result in trace.moe's shape; `base` is the server's address for the preview links.
fn result_of(hit: SceneHit, base: &str, info: bool) -> Value {
    // trace.moe always has an AniList id and its clients require one: 0 for a video added
    // without `anilistID`.
    let id: u64 = hit
        .labels
        .get(crate::video::ANILIST_LEVEL)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let anilist = if info {
        json!({
            "id": id,
            "idMal": null,
            "title": { "native": null, "romaji": hit.frame.title, "english": null },
            "synonyms": [],
            "isAdult": false,
        })
    } else {
        json!(id)
    };
    json!({
        "anilist": anilist,
        "filename": hit.frame.filename,
        "episode": episode_value(hit.frame.episode.as_deref()),
        "from": hit.frame.from,
        "at": hit.frame.at,
        "to": hit.frame.to,
        "similarity": hit.similarity,
        "video": format!("{base}/api/v1/scenes/{}/clip", hit.item),
        "image": format!("{base}/api/v1/scenes/{}/image", hit.item),
    })
}

/// `GET|POST /search`.
pub async fn search(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    params: web::Query<TraceParams>,
) -> HttpResponse {
    if params.url.is_some() {
        return trace_error(
            StatusCode::BAD_REQUEST,
            "searching by url is disabled on this server; POST the image as the body or as a \
             multipart part named \"image\""
                .into(),
        );
    }
    if req.method() == actix_web::http::Method::GET {
        return trace_error(
            StatusCode::BAD_REQUEST,
            "GET /search needs url=, which is disabled here; POST the image instead".into(),
        );
    }
    let anilist = match params.anilist_id.as_deref().map(str::parse::<u64>) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => {
            return trace_error(StatusCode::BAD_REQUEST, "anilistID must be a number".into())
        }
    };
    let searched = async {
        let upload = upload::read(&req, payload, state.upload_limits()).await?;
        let image = upload.all_images().remove(0);
        find_scenes(&state, image, RESULTS, anilist).await
    }
    .await;
    match searched {
        Ok(found) => {
            let info = req.connection_info();
            let base = format!("{}://{}", info.scheme(), info.host());
            let with_info = params.anilist_info.is_some();
            HttpResponse::Ok().json(TraceResponse {
                frame_count: found.searched,
                error: String::new(),
                result: found
                    .scenes
                    .into_iter()
                    .map(|s| result_of(s, &base, with_info))
                    .collect(),
            })
        }
        Err(e) => error_answer(e),
    }
}

/// An API error in trace.moe's shape.
fn error_answer(e: ApiError) -> HttpResponse {
    let status = e.status_code();
    if status.is_server_error() {
        tracing::error!("{e}");
    }
    trace_error(status, e.to_string())
}

/// `GET /me`: the caller's quota, as trace.moe reports it (no quotas here).
pub async fn me(req: HttpRequest) -> HttpResponse {
    let id = req
        .connection_info()
        .realip_remote_addr()
        .unwrap_or("unknown")
        .to_string();
    HttpResponse::Ok().json(json!({
        "id": id,
        "priority": 0,
        "concurrency": 1,
        "quota": 1_000_000,
        "quotaUsed": 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn episodes_are_numbers_when_they_are_numbers() {
        assert_eq!(episode_value(Some("12")), json!(12));
        assert_eq!(episode_value(Some("OVA")), json!("OVA"));
        assert_eq!(episode_value(None), Value::Null);
    }
}
