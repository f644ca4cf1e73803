//! Reverse image search: `POST /api/v1/search` with an uploaded image, and
//! `GET /api/v1/items/{id}/similar` from a stored item. Both take `k` and label/tag filters; the
//! upload form has a flip-robust mode that embeds the image and its mirror and searches with the
//! mean of the two embeddings.

use crate::api::types::{ErrorBody, FilterParams, HitsResponse};
use crate::error::ApiError;
use crate::state::AppState;
use crate::upload;
use actix_web::web::Bytes;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use animelens_index::CatalogLogic;
use animelens_models::preprocess::decode;
use serde::Deserialize;
use std::io::Cursor;
use utoipa::IntoParams;

/// Query parameters of the search endpoints.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Number of results (default 12).
    #[serde(default = "default_k")]
    pub k: usize,
    /// Also embed the mirrored image and search with the mean of both (uploads only).
    #[serde(default)]
    pub flip: bool,
}

fn default_k() -> usize {
    12
}

/// The horizontal mirror of an image, PNG-encoded.
fn mirrored(bytes: &[u8], max_pixels: u64) -> Result<Bytes, ApiError> {
    let image = decode(bytes, max_pixels).map_err(|e| ApiError::BadImage(e.to_string()))?;
    let flipped = image::imageops::flip_horizontal(&image);
    let mut png = Vec::new();
    flipped
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| ApiError::Internal(format!("cannot encode the mirrored image: {e}")))?;
    Ok(Bytes::from(png))
}

/// Search the catalogue with an image.
#[utoipa::path(
    post,
    path = "/api/v1/search",
    tag = "search",
    params(SearchParams, FilterParams),
    request_body(content = Vec<u8>, description = "an image (raw body with an image/* type), or multipart/form-data with file parts (their mean embedding is the query)", content_type = "image/*"),
    responses(
        (status = 200, body = HitsResponse),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
#[post("/search")]
pub async fn search_image(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    params: web::Query<SearchParams>,
    filter: web::Query<FilterParams>,
) -> Result<HttpResponse, ApiError> {
    let k = state.check_k(params.k)?;
    let filter = filter.to_filter().map_err(ApiError::BadRequest)?;
    let mut images = upload::read(&req, payload, state.upload_limits())
        .await?
        .all_images();
    if params.flip {
        let max_pixels = state.settings.max_pixels;
        let originals = images.clone();
        let mirrors = state
            .blocking(move || {
                originals
                    .iter()
                    .map(|b| mirrored(b, max_pixels))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        images.extend(mirrors);
    }
    let predictions = state.predict_all(images, 1).await?;
    let dim = predictions[0].embedding.len();
    let mut query = vec![0f32; dim];
    for p in &predictions {
        query
            .iter_mut()
            .zip(&p.embedding)
            .for_each(|(q, e)| *q += e);
    }
    let hits = state
        .catalog(move |cat| cat.search(&query, k, &filter))
        .await?;
    Ok(HttpResponse::Ok().json(HitsResponse::searched(hits, state.similarity)))
}

/// Items most similar to a stored item (itself excluded).
#[utoipa::path(
    get,
    path = "/api/v1/items/{id}/similar",
    tag = "search",
    params(("id" = u64, Path, description = "item id"), SearchParams, FilterParams),
    responses((status = 200, body = HitsResponse), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody))
)]
#[get("/items/{id}/similar")]
pub async fn similar_items(
    state: web::Data<AppState>,
    id: web::Path<u64>,
    params: web::Query<SearchParams>,
    filter: web::Query<FilterParams>,
) -> Result<HttpResponse, ApiError> {
    let k = state.check_k(params.k)?;
    let filter = filter.to_filter().map_err(ApiError::BadRequest)?;
    let id = id.into_inner();
    let hits = state
        .catalog(move |cat| cat.search_by_id(id, k, &filter))
        .await?;
    Ok(HttpResponse::Ok().json(HitsResponse::searched(hits, state.similarity)))
}
