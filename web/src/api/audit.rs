//! Copyright review: `POST /api/v1/audit` with one or several images answers, per image, whether
//! it is an edited copy of a catalogued picture, of which, at what score, and the edit it looks
//! like: the same review as `animelens audit` (`Catalog::audit_upload`), read access.

use crate::api::types::ErrorBody;
use crate::error::ApiError;
use crate::state::AppState;
use crate::upload;
use actix_web::{post, web, HttpRequest, HttpResponse};
use animelens_index::{CatalogLogic, CopyFinding};
use animelens_models::copies::hint::{edit_hint, UploadTraits};
use animelens_models::CopyViews;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Query parameters of the review.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Matches listed per image (default 3).
    #[serde(default = "default_show")]
    pub show: usize,
}

fn default_show() -> usize {
    3
}

/// The findings, one per uploaded image, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditResponse {
    /// Per image: `upload` (file name), `verdict` (`copy` / `not_a_copy`), `score`, `threshold`,
    /// `calibrated`, `edit` (e.g. `mirrored`, `cropped`, `exact`) and `matches` (`id`, `source`,
    /// `character`, `similarity`), best first.
    #[schema(value_type = Vec<Object>)]
    pub findings: Vec<CopyFinding>,
}

/// Review uploads for copies of catalogued pictures.
#[utoipa::path(
    post,
    path = "/api/v1/audit",
    tag = "search",
    params(AuditParams),
    request_body(content = Vec<u8>, description = "an image (raw body with an image/* type), or multipart/form-data with one or several file parts", content_type = "image/*"),
    responses(
        (status = 200, body = AuditResponse),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
#[post("/audit")]
pub async fn audit(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    params: web::Query<AuditParams>,
) -> Result<HttpResponse, ApiError> {
    let show = state.check_k(params.show)?;
    let upload = upload::read(&req, payload, state.upload_limits()).await?;
    let names: Vec<String> = upload
        .images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            img.filename
                .clone()
                .unwrap_or_else(|| format!("image {}", i + 1))
        })
        .collect();
    let pictures = state.decode_pictures(upload.all_images()).await?;
    let predictions = state
        .predict(
            pictures.iter().map(|p| p.image.clone()).collect(),
            1,
            Some(CopyViews::Query),
        )
        .await?;
    let uploads: Vec<(String, String, Vec<Vec<f32>>, UploadTraits)> = pictures
        .into_iter()
        .zip(predictions)
        .zip(names)
        .map(|((picture, p), name)| {
            let traits = UploadTraits::of(&picture.image);
            (name, picture.content_hash, p.copies, traits)
        })
        .collect();
    let findings = state
        .catalog(move |cat| {
            uploads
                .into_iter()
                .map(|(name, hash, views, traits)| {
                    cat.audit_upload(name, &hash, &views, show, |m| {
                        edit_hint(m.query_view, m.view, traits)
                            .into_iter()
                            .map(String::from)
                            .collect()
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    Ok(HttpResponse::Ok().json(AuditResponse { findings }))
}
