//! Items: add an image with labels and tags, read an item's metadata and thumbnail, change its
//! labels or tags, remove an item. Adding, changing and removing are writes and need the API key.

use crate::api::types::{split_list, ErrorBody, ItemView};
use crate::error::ApiError;
use crate::ingest::ItemMeta;
use crate::state::AppState;
use crate::upload;
use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{delete, get, patch, post, web, HttpRequest, HttpResponse};
use animelens_index::{AddOutcome, CatalogError, ItemUpdate, NewItem, PRIMARY_LEVEL};
use animelens_models::CopyViews;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// The outcome of adding one image.
#[derive(Debug, Serialize, ToSchema)]
pub struct AddedView {
    /// The new item's id, or the existing item's id for an exact duplicate.
    pub id: u64,
    /// True when the same bytes were already in the catalogue (nothing was added).
    pub duplicate: bool,
}

impl From<AddOutcome> for AddedView {
    fn from(o: AddOutcome) -> Self {
        AddedView {
            id: o.id,
            duplicate: o.duplicate,
        }
    }
}

/// Answer of `POST /items`: one outcome per image.
#[derive(Debug, Serialize, ToSchema)]
pub struct AddResponse {
    /// Per image, in order.
    pub items: Vec<AddedView>,
}

/// Metadata of added images, as query parameters or multipart text fields of the same names.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ItemParams {
    /// The character shown.
    pub character: Option<String>,
    /// Other labels: comma-separated `level:value` pairs.
    pub labels: Option<String>,
    /// Comma-separated tags.
    pub tags: Option<String>,
    /// Where the image came from (defaults to the uploaded file name).
    pub source: Option<String>,
}

/// Decodes `images` once (off the executor), embeds them with their catalogue copy views and
/// builds their catalogue items.
pub async fn embed_items(
    state: &AppState,
    images: Vec<Bytes>,
    metas: Vec<ItemMeta>,
) -> Result<Vec<NewItem>, ApiError> {
    let pictures = state.decode_pictures(images).await?;
    let predictions = state
        .predict(
            pictures.iter().map(|p| p.image.clone()).collect(),
            1,
            Some(CopyViews::Catalogue),
        )
        .await?;
    state
        .blocking(move || {
            pictures
                .into_iter()
                .zip(predictions)
                .zip(metas)
                .map(|((picture, p), meta)| {
                    picture
                        .into_item(meta, p)
                        .map_err(|e| ApiError::BadImage(e.to_string()))
                })
                .collect()
        })
        .await
}

/// Reads the metadata of an upload: form fields first, query parameters otherwise.
fn item_meta(
    upload: &upload::Upload,
    params: &ItemParams,
    filename: Option<&str>,
) -> Result<ItemMeta, ApiError> {
    let get = |name: &str, fallback: &Option<String>| {
        upload
            .fields
            .get(name)
            .cloned()
            .or_else(|| fallback.clone())
    };
    let mut meta = ItemMeta {
        source: get("source", &params.source)
            .or_else(|| filename.map(str::to_string))
            .unwrap_or_default(),
        ..ItemMeta::default()
    };
    for pair in split_list(get("labels", &params.labels).as_deref()) {
        let (level, value) = pair.split_once(':').ok_or_else(|| {
            ApiError::BadRequest(format!(
                "label {pair:?} is not `level:value`; write e.g. labels=work:hololive"
            ))
        })?;
        meta.labels.insert(level.trim().into(), value.trim().into());
    }
    if let Some(c) = get("character", &params.character).filter(|c| !c.trim().is_empty()) {
        meta.labels.insert(PRIMARY_LEVEL.into(), c.trim().into());
    }
    meta.tags = split_list(get("tags", &params.tags).as_deref())
        .map(str::to_string)
        .collect();
    Ok(meta)
}

/// Add images to the catalogue. Needs X-Api-Key.
#[utoipa::path(post, path = "/api/v1/items", tag = "items", params(ItemParams),
    request_body(content = Vec<u8>, description = "an image (raw body), or multipart/form-data with file parts and optional text fields character, labels, tags, source", content_type = "image/*"),
    security(("api_key" = [])),
    responses((status = 201, body = AddResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
#[post("/items")]
pub async fn add(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    params: web::Query<ItemParams>,
) -> Result<HttpResponse, ApiError> {
    state.authorize_write(&req)?;
    let upload = upload::read(&req, payload, state.upload_limits()).await?;
    let metas = upload
        .images
        .iter()
        .map(|i| item_meta(&upload, &params, i.filename.as_deref()))
        .collect::<Result<Vec<_>, _>>()?;
    let items = embed_items(&state, upload.all_images(), metas).await?;
    let outcomes = state.catalog(move |cat| cat.add_batch(items)).await?;
    Ok(HttpResponse::Created().json(AddResponse {
        items: outcomes.into_iter().map(Into::into).collect(),
    }))
}

fn not_found(id: u64) -> ApiError {
    ApiError::NotFound(format!(
        "no item with id {id} (never added, or removed); search again to get current ids"
    ))
}

/// An item's metadata.
#[utoipa::path(get, path = "/api/v1/items/{id}", tag = "items",
    params(("id" = u64, Path, description = "item id")),
    responses((status = 200, body = ItemView), (status = 404, body = ErrorBody)))]
#[get("/items/{id}")]
pub async fn get_item(
    state: web::Data<AppState>,
    id: web::Path<u64>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let item = state
        .catalog(move |cat| cat.get(id))
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(HttpResponse::Ok().json(ItemView::from(item)))
}

/// An item's JPEG thumbnail.
#[utoipa::path(get, path = "/api/v1/items/{id}/thumbnail", tag = "items",
    params(("id" = u64, Path, description = "item id")),
    responses((status = 200, content_type = "image/jpeg", body = Vec<u8>), (status = 404, body = ErrorBody)))]
#[get("/items/{id}/thumbnail")]
pub async fn thumbnail(
    state: web::Data<AppState>,
    id: web::Path<u64>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let jpeg = state
        .catalog(move |cat| cat.thumbnail(id))
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(HttpResponse::Ok()
        .content_type("image/jpeg")
        .insert_header((header::CACHE_CONTROL, "public, max-age=86400, immutable"))
        .body(jpeg))
}

/// Remove an item. Needs X-Api-Key.
#[utoipa::path(delete, path = "/api/v1/items/{id}", tag = "items",
    params(("id" = u64, Path, description = "item id")),
    security(("api_key" = [])),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[delete("/items/{id}")]
pub async fn remove(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<u64>,
) -> Result<HttpResponse, ApiError> {
    state.authorize_write(&req)?;
    let id = id.into_inner();
    state.catalog(move |cat| cat.remove(id)).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Body of `PATCH /items/{id}`: each field given replaces the item's current value; omitted
/// fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemPatch {
    /// New labels, all levels at once (e.g. `{"character": "gura", "work": "hololive"}`).
    pub labels: Option<BTreeMap<String, String>>,
    /// New tags, replacing all current ones.
    pub tags: Option<Vec<String>>,
}

/// Change an item's labels and/or tags (a relabelled character moves the item to that
/// character's centroid). Needs X-Api-Key.
#[utoipa::path(patch, path = "/api/v1/items/{id}", tag = "items",
    params(("id" = u64, Path, description = "item id")),
    request_body = ItemPatch,
    security(("api_key" = [])),
    responses((status = 200, body = ItemView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
#[patch("/items/{id}")]
pub async fn update(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<u64>,
    body: web::Json<ItemPatch>,
) -> Result<HttpResponse, ApiError> {
    state.authorize_write(&req)?;
    let id = id.into_inner();
    let ItemPatch { labels, tags } = body.into_inner();
    if labels.is_none() && tags.is_none() {
        return Err(ApiError::BadRequest(
            "nothing to change: send {\"labels\": {...}} and/or {\"tags\": [...]}".into(),
        ));
    }
    let change = ItemUpdate { labels, tags };
    let item = state
        .catalog(move |cat| cat.update(id, &change))
        .await
        .map_err(|e| match e {
            ApiError::Catalog(CatalogError::UnknownItem { .. }) => not_found(id),
            other => other,
        })?;
    Ok(HttpResponse::Ok().json(ItemView::from(item)))
}
