//! Users: record what a user did with an item (view, like, dislike) and serve their personal
//! feed — built by the catalogue from their likes and dislikes, excluding what they have seen,
//! diversified by maximal marginal relevance (cold-start users get popular and random items).

use crate::api::types::{ErrorBody, HitsResponse};
use crate::error::ApiError;
use crate::state::AppState;
use crate::upload;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use animelens_index::{CatalogLogic, EventKind};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Most bytes of an event body.
const MAX_EVENT_BYTES: usize = 4096;

/// Longest user name.
const MAX_USER_LEN: usize = 128;

/// One user event.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    /// The item concerned.
    pub item: u64,
    /// `view`, `like` or `dislike`.
    #[schema(value_type = String, example = "like")]
    pub kind: EventKind,
}

/// Query parameters of the feed.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedParams {
    /// Number of items (default 12).
    #[serde(default = "default_k")]
    pub k: usize,
    /// MMR trade-off in [0, 1] (default: the server's `feed_lambda`).
    pub lambda: Option<f32>,
}

fn default_k() -> usize {
    12
}

fn check_user(user: &str) -> Result<(), ApiError> {
    if user.is_empty() || user.len() > MAX_USER_LEN || user.contains('\0') {
        return Err(ApiError::BadRequest(format!(
            "user name must be 1 to {MAX_USER_LEN} bytes without NUL characters"
        )));
    }
    Ok(())
}

/// Record a user event.
#[utoipa::path(post, path = "/api/v1/users/{user}/events", tag = "recommendation",
    params(("user" = String, Path, description = "user name")),
    request_body = EventRequest,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 415, body = ErrorBody)))]
#[post("/users/{user}/events")]
pub async fn record_event(
    state: web::Data<AppState>,
    req: HttpRequest,
    user: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let user = user.into_inner();
    check_user(&user)?;
    let event: EventRequest = upload::read_json(&req, payload, MAX_EVENT_BYTES).await?;
    state
        .catalog(move |cat| cat.record_event(&user, event.item, event.kind, None))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A user's personal feed.
#[utoipa::path(get, path = "/api/v1/users/{user}/feed", tag = "recommendation",
    params(("user" = String, Path, description = "user name"), FeedParams),
    responses((status = 200, body = HitsResponse), (status = 400, body = ErrorBody)))]
#[get("/users/{user}/feed")]
pub async fn feed(
    state: web::Data<AppState>,
    user: web::Path<String>,
    params: web::Query<FeedParams>,
) -> Result<HttpResponse, ApiError> {
    let user = user.into_inner();
    check_user(&user)?;
    let k = state.check_k(params.k)?;
    let lambda = params.lambda.unwrap_or(state.settings.feed_lambda);
    let hits = state.catalog(move |cat| cat.feed(&user, k, lambda)).await?;
    Ok(HttpResponse::Ok().json(HitsResponse::new(hits)))
}
