//! `POST /api/v1/recommend`: items from positive and negative examples (stored item ids and/or
//! uploaded images), with Qdrant's `average_vector` or `best_score` strategy, filters and
//! exclusions. The examples themselves are never returned.

use crate::api::types::{ErrorBody, FilterBody, HitsResponse};
use crate::error::ApiError;
use crate::state::AppState;
use crate::upload;
use actix_web::{post, web, HttpRequest, HttpResponse};
use animelens_index::limits::check_examples;
use animelens_index::{CatalogError, CatalogLogic, RecommendQuery, RecommendStrategy};
use serde::Deserialize;
use utoipa::ToSchema;

/// A recommendation request (the JSON body, or the `request` field of a multipart body whose
/// file parts named `positive` / `negative` are further examples).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecommendRequest {
    /// Ids of items the user wants more of.
    #[serde(default)]
    pub positive: Vec<u64>,
    /// Ids of items the user wants less of.
    #[serde(default)]
    pub negative: Vec<u64>,
    /// `average_vector` (default) or `best_score`.
    #[serde(default)]
    #[schema(value_type = String, example = "average_vector")]
    pub strategy: RecommendStrategy,
    /// Number of results (default 12).
    #[serde(default = "default_k")]
    pub k: usize,
    /// Conditions on results.
    #[serde(default)]
    pub filter: FilterBody,
    /// Ids never to return.
    #[serde(default)]
    pub exclude: Vec<u64>,
}

/// Largest JSON recommendation request, in bytes (room for the largest id lists allowed).
const MAX_JSON_BYTES: usize = 64 * 1024;

fn default_k() -> usize {
    12
}

/// Recommend items from examples.
#[utoipa::path(post, path = "/api/v1/recommend", tag = "recommendation",
    request_body(content = RecommendRequest, description = "JSON; or multipart/form-data with the JSON in a `request` field and image files named `positive` / `negative`"),
    responses((status = 200, body = HitsResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
#[post("/recommend")]
pub async fn recommend(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (request, positive_images, negative_images) = if upload::is_upload(&req) {
        let upload = upload::read(&req, payload, state.upload_limits()).await?;
        let json = upload.fields.get("request").map_or("{}", String::as_str);
        let request: RecommendRequest = serde_json::from_str(json).map_err(|e| {
            ApiError::BadRequest(format!(
                "the `request` field is not a valid recommendation request: {e}"
            ))
        })?;
        (
            request,
            upload.images_in("positive"),
            upload.images_in("negative"),
        )
    } else {
        let body = upload::read_json(&req, payload, MAX_JSON_BYTES).await?;
        (body, Vec::new(), Vec::new())
    };
    let k = state.check_k(request.k)?;
    // Before any vector is loaded: the stored examples are excluded from the answer too.
    let stored = request.positive.len() + request.negative.len();
    check_examples(
        stored + positive_images.len() + negative_images.len(),
        request.exclude.len() + stored,
    )?;
    let split = positive_images.len();
    let uploaded = [positive_images, negative_images].concat();
    let vectors: Vec<Vec<f32>> = if uploaded.is_empty() {
        Vec::new()
    } else {
        state
            .predict_all(uploaded, 1)
            .await?
            .into_iter()
            .map(|p| p.embedding)
            .collect()
    };
    let (mut positives, mut negatives) = (vectors[..split].to_vec(), vectors[split..].to_vec());
    let answer = state
        .catalog(move |cat| {
            let stored = |id: u64| cat.vector(id)?.ok_or(CatalogError::UnknownItem { id });
            for &id in &request.positive {
                positives.push(stored(id)?);
            }
            for &id in &request.negative {
                negatives.push(stored(id)?);
            }
            let exclude = [request.exclude, request.positive, request.negative].concat();
            cat.recommend(&RecommendQuery {
                positives,
                negatives,
                strategy: request.strategy,
                k,
                filter: request.filter.into(),
                exclude,
            })
        })
        .await?;
    Ok(HttpResponse::Ok().json(HitsResponse::new(answer)))
}
