//! Characters (labels at the primary level): list them, find lookalike characters by centroid,
//! and enrol a new character from a few images (a write: needs the API key).

use crate::api::items::{embed_items, AddedView};
use crate::api::types::{CharacterScoreView, ErrorBody};
use crate::error::ApiError;
use crate::ingest::ItemMeta;
use crate::state::AppState;
use crate::upload;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use animelens_index::CatalogLogic;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Answer of `GET /characters`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CharactersResponse {
    /// Character names, sorted.
    pub characters: Vec<String>,
}

/// Answer of `GET /characters/{name}/similar`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SimilarCharactersResponse {
    /// The character asked about.
    pub character: String,
    /// Lookalike characters, best first.
    pub similar: Vec<CharacterScoreView>,
}

/// Answer of `POST /characters`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnrolResponse {
    /// The enrolled character.
    pub character: String,
    /// The items added for it, one per image.
    pub items: Vec<AddedView>,
}

/// `k` in a query string.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KParams {
    /// Number of results (default 5).
    #[serde(default = "default_k")]
    pub k: usize,
}

fn default_k() -> usize {
    5
}

/// List characters.
#[utoipa::path(get, path = "/api/v1/characters", tag = "characters",
    responses((status = 200, body = CharactersResponse)))]
#[get("/characters")]
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let characters = state
        .catalog(|cat| cat.character_centroids())
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    Ok(HttpResponse::Ok().json(CharactersResponse { characters }))
}

/// Lookalike characters of a character, by centroid cosine.
#[utoipa::path(get, path = "/api/v1/characters/{name}/similar", tag = "characters",
    params(("name" = String, Path, description = "character name"), KParams),
    responses((status = 200, body = SimilarCharactersResponse), (status = 404, body = ErrorBody)))]
#[get("/characters/{name}/similar")]
pub async fn similar(
    state: web::Data<AppState>,
    name: web::Path<String>,
    params: web::Query<KParams>,
) -> Result<HttpResponse, ApiError> {
    let k = state.check_k(params.k)?;
    let character = name.into_inner();
    let wanted = character.clone();
    let similar = state
        .catalog(move |cat| cat.similar_characters(&wanted, k))
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(HttpResponse::Ok().json(SimilarCharactersResponse { character, similar }))
}

/// Enrol a character from a few images (multipart: a `name` field and file parts). Needs X-Api-Key.
#[utoipa::path(post, path = "/api/v1/characters", tag = "characters",
    request_body(content = String, description = "multipart/form-data: text field `name`, one or more image files", content_type = "multipart/form-data"),
    security(("api_key" = [])),
    responses((status = 201, body = EnrolResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
#[post("/characters")]
pub async fn enrol(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    state.authorize_write(&req)?;
    let upload = upload::read(&req, payload, state.upload_limits()).await?;
    let name = upload
        .fields
        .get("name")
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::BadRequest(
                "enrolment needs the character's name in a form field named \"name\"".into(),
            )
        })?;
    let metas = upload
        .images
        .iter()
        .map(|i| ItemMeta {
            source: i.filename.clone().unwrap_or_default(),
            ..ItemMeta::default()
        })
        .collect();
    let items = embed_items(&state, upload.all_images(), metas).await?;
    let character = name.clone();
    let outcomes = state
        .catalog(move |cat| cat.enroll_items(&name, items))
        .await?;
    Ok(HttpResponse::Created().json(EnrolResponse {
        character,
        items: outcomes.into_iter().map(Into::into).collect(),
    }))
}
