//! `POST /api/v1/classify`: the network's top-k per head for each uploaded image, and the
//! character verdict from the catalogue's centroids with its open-set threshold ("unknown" when
//! the best character is not close enough).

use crate::api::types::{CharacterScoreView, ErrorBody};
use crate::error::ApiError;
use crate::state::AppState;
use crate::upload;
use actix_web::{post, web, HttpRequest, HttpResponse};
use animelens_index::{CatalogLogic, Classification};
use animelens_models::{HeadPrediction, Prediction};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Query parameters of `POST /classify`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClassifyParams {
    /// Labels per head and candidate characters to return (default 5).
    #[serde(default = "default_k")]
    pub k: usize,
    /// Also return each image's embedding (default false).
    #[serde(default)]
    pub embedding: bool,
}

fn default_k() -> usize {
    5
}

/// One label of one head.
#[derive(Debug, Serialize, ToSchema)]
pub struct LabelView {
    /// The label.
    pub label: String,
    /// Softmax probability.
    pub probability: f32,
}

/// The top-k labels of one head.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeadView {
    /// The label level (e.g. `character`).
    pub head: String,
    /// Best first.
    pub top: Vec<LabelView>,
}

impl From<HeadPrediction> for HeadView {
    fn from(h: HeadPrediction) -> Self {
        HeadView {
            head: h.head,
            top: h
                .top
                .into_iter()
                .map(|l| LabelView {
                    label: l.label,
                    probability: l.probability,
                })
                .collect(),
        }
    }
}

/// Which character the image shows, or unknown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CharacterVerdict {
    /// The character, or null when unknown.
    pub name: Option<String>,
    /// True when the open-set check rejected every known character.
    pub unknown: bool,
    /// Cosine between the image and the best character's centroid.
    pub score: f32,
    /// The threshold `score` had to reach.
    pub threshold: f32,
    /// The network's probability for the best centroid's character (null if it has no such class).
    pub probability: Option<f32>,
    /// Nearest characters by centroid, best first (the image's lookalike characters).
    pub candidates: Vec<CharacterScoreView>,
}

/// What the service says about one image.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImageClassification {
    /// The character verdict.
    pub character: CharacterVerdict,
    /// The network's top-k per head.
    pub heads: Vec<HeadView>,
    /// The L2-normalised embedding, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
}

/// Answer of `POST /classify`: one entry per uploaded image, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClassifyResponse {
    /// Per image.
    pub results: Vec<ImageClassification>,
}

fn verdict(prediction: &Prediction, c: Classification) -> CharacterVerdict {
    let best = c.candidates.first();
    let probability = best.and_then(|b| {
        prediction
            .heads
            .first()
            .and_then(|h| h.top.iter().find(|l| l.label == b.name))
            .map(|l| l.probability)
    });
    CharacterVerdict {
        unknown: c.label.is_none(),
        name: c.label,
        score: best.map_or(0.0, |b| b.score),
        threshold: c.threshold,
        probability,
        candidates: c.candidates.into_iter().map(Into::into).collect(),
    }
}

/// Classify images.
#[utoipa::path(
    post,
    path = "/api/v1/classify",
    tag = "recognition",
    params(ClassifyParams),
    request_body(content = Vec<u8>, description = "an image (raw body with an image/* type), or multipart/form-data with one or more file parts", content_type = "image/*"),
    responses(
        (status = 200, body = ClassifyResponse),
        (status = 400, body = ErrorBody, description = "empty body, or an image URL (disabled)"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "not a decodable image, or too many pixels"),
        (status = 503, body = ErrorBody, description = "inference queue full; see Retry-After"),
    )
)]
#[post("/classify")]
pub async fn classify(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    params: web::Query<ClassifyParams>,
) -> Result<HttpResponse, ApiError> {
    let content_type = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("application/json") {
        return Err(ApiError::BadRequest(
            "classifying an image by URL is disabled on this server (the server does not fetch \
             remote images); download the image and upload its bytes instead"
                .into(),
        ));
    }
    let k = state.check_k(params.k)?;
    let upload = upload::read(&req, payload, state.upload_limits()).await?;
    let predictions = state.predict_all(upload.all_images(), k).await?;
    let vectors: Vec<Vec<f32>> = predictions.iter().map(|p| p.embedding.clone()).collect();
    let classifications = state
        .catalog(move |cat| {
            vectors
                .iter()
                .map(|v| cat.classify_by_centroid(v, k))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    let results = predictions
        .into_iter()
        .zip(classifications)
        .map(|(p, c)| ImageClassification {
            character: verdict(&p, c),
            embedding: params.embedding.then(|| p.embedding.clone()),
            heads: p.heads.into_iter().map(Into::into).collect(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(ClassifyResponse { results }))
}
