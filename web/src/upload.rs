//! Reading images out of a request: a `multipart/form-data` body (one or more file parts plus
//! text fields) or a raw image body (`image/*`, `application/octet-stream`). Enforces the body
//! size limit (413), the time a client may take to send the body (408, `request_timeout_secs`:
//! slow clients cannot hold a connection open indefinitely), the content type (415), the
//! per-request image count, and refuses empty images (400); the decoder in `animelens_models`
//! judges formats (415) and damaged files (422).

use crate::error::ApiError;
use actix_multipart::Multipart;
use actix_web::http::header;
use actix_web::web::{Bytes, BytesMut, Payload};
use actix_web::HttpRequest;
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// One uploaded image and the form field it came in.
#[derive(Debug, Clone)]
pub struct UploadedImage {
    /// Multipart field name (`image` for a raw body).
    pub field: String,
    /// File name given by the client, if any.
    pub filename: Option<String>,
    /// The encoded image.
    pub bytes: Bytes,
}

/// The images and text fields of a request.
#[derive(Debug, Default)]
pub struct Upload {
    /// Images in the order received.
    pub images: Vec<UploadedImage>,
    /// Text fields (multipart only); a repeated name keeps the last value.
    pub fields: BTreeMap<String, String>,
}

impl Upload {
    /// The bytes of every image whose field is `field`.
    pub fn images_in(&self, field: &str) -> Vec<Bytes> {
        self.images
            .iter()
            .filter(|i| i.field == field)
            .map(|i| i.bytes.clone())
            .collect()
    }

    /// All image bytes, in order.
    pub fn all_images(&self) -> Vec<Bytes> {
        self.images.iter().map(|i| i.bytes.clone()).collect()
    }
}

/// Limits applied while reading.
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    /// Largest body in bytes.
    pub max_bytes: usize,
    /// Most images.
    pub max_images: usize,
}

/// Whether the request's content type is one [`read`] accepts.
pub fn is_upload(req: &HttpRequest) -> bool {
    let ct = content_type(req);
    ct.starts_with("multipart/form-data")
        || ct.starts_with("image/")
        || ct.starts_with("application/octet-stream")
}

fn content_type(req: &HttpRequest) -> String {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Reads the request's images and fields; at least one image is required.
pub async fn read(
    req: &HttpRequest,
    payload: Payload,
    limits: UploadLimits,
) -> Result<Upload, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes) {
        return Err(ApiError::PayloadTooLarge {
            limit: limits.max_bytes,
        });
    }
    let ct = content_type(req);
    let upload = if ct.starts_with("multipart/form-data") {
        within_deadline(req, read_multipart(req, payload, limits)).await?
    } else if ct.starts_with("image/") || ct.starts_with("application/octet-stream") {
        let bytes = within_deadline(req, read_body(payload, limits.max_bytes)).await?;
        Upload {
            images: vec![UploadedImage {
                field: "image".into(),
                filename: None,
                bytes,
            }],
            fields: BTreeMap::new(),
        }
    } else {
        return Err(ApiError::UnsupportedMediaType(format!(
            "content type {:?} is not accepted here; send the image as the raw body with an image/* \
             content type, or as multipart/form-data with a file part named \"image\"",
            if ct.is_empty() { "(none)" } else { ct.as_str() }
        )));
    };
    if upload.images.is_empty() {
        return Err(ApiError::BadRequest(
            "the request holds no image (the body is empty, or no multipart part carries a file); \
             send an image file"
                .into(),
        ));
    }
    if upload.images.len() > limits.max_images {
        return Err(ApiError::BadRequest(format!(
            "{} images in one request, over the limit of {}; split the request",
            upload.images.len(),
            limits.max_images
        )));
    }
    for (i, image) in upload.images.iter().enumerate() {
        check_not_empty(&image.bytes, i, upload.images.len())?;
    }
    Ok(upload)
}

/// How long a client may take to send a body (the service's `request_timeout_secs`), as the
/// server registers it in the app's data; 30 s where none is registered.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline {
    /// Seconds.
    pub secs: u64,
}

/// Runs a body read, failing with 408 past the [`BodyDeadline`].
async fn within_deadline<T>(
    req: &HttpRequest,
    read: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let secs = req.app_data::<BodyDeadline>().map_or(30, |d| d.secs);
    actix_web::rt::time::timeout(Duration::from_secs(secs), read)
        .await
        .map_err(|_| ApiError::RequestTimeout { secs })?
}

/// Rejects empty images; everything else about the bytes is the decoder's to judge.
fn check_not_empty(bytes: &[u8], index: usize, count: usize) -> Result<(), ApiError> {
    if bytes.is_empty() {
        let which = if count > 1 {
            format!("image {} of {count}", index + 1)
        } else {
            "the image".to_string()
        };
        return Err(ApiError::BadRequest(format!(
            "{which} is empty (0 bytes); send an image file"
        )));
    }
    Ok(())
}

/// Reads a whole body, failing with 413 past `max` bytes.
async fn read_body(mut payload: Payload, max: usize) -> Result<Bytes, ApiError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > max {
            return Err(ApiError::PayloadTooLarge { limit: max });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Reads every part of a multipart body: parts with a file name or an image content type are
/// images, the others text fields.
async fn read_multipart(
    req: &HttpRequest,
    payload: Payload,
    limits: UploadLimits,
) -> Result<Upload, ApiError> {
    let bad = |e: actix_multipart::MultipartError| {
        ApiError::BadRequest(format!(
            "malformed multipart body ({e}); send multipart/form-data with a file part named \"image\""
        ))
    };
    let mut multipart = Multipart::new(req.headers(), payload);
    let mut upload = Upload::default();
    let mut total = 0usize;
    while let Some(field) = multipart.next().await {
        let mut field = field.map_err(bad)?;
        let name = field.name().unwrap_or("").to_string();
        let filename = field
            .content_disposition()
            .and_then(|cd| cd.get_filename())
            .map(str::to_string);
        let is_image = filename.is_some()
            || field.content_type().is_some_and(|m| {
                m.type_() == "image" || m.essence_str() == "application/octet-stream"
            });
        let mut data = BytesMut::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(bad)?;
            total += chunk.len();
            if total > limits.max_bytes {
                return Err(ApiError::PayloadTooLarge {
                    limit: limits.max_bytes,
                });
            }
            data.extend_from_slice(&chunk);
        }
        if is_image {
            upload.images.push(UploadedImage {
                field: name,
                filename,
                bytes: data.freeze(),
            });
        } else {
            let text = String::from_utf8(data.to_vec()).map_err(|_| {
                ApiError::BadRequest(format!("form field {name:?} is not UTF-8 text"))
            })?;
            upload.fields.insert(name, text);
        }
    }
    Ok(upload)
}

/// Reads a JSON body into `T`: 415 unless the content type is JSON, 413 past `max_bytes`,
/// 400 with the parser's message when malformed.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    payload: Payload,
    max_bytes: usize,
) -> Result<T, ApiError> {
    let ct = content_type(req);
    if !ct.starts_with("application/json") {
        return Err(ApiError::UnsupportedMediaType(format!(
            "content type {:?} is not accepted here; send a JSON body with Content-Type: application/json",
            if ct.is_empty() { "(none)" } else { ct.as_str() }
        )));
    }
    let body = within_deadline(req, read_body(payload, max_bytes)).await?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "malformed JSON body: {e}; see /api/v1/openapi.json for the expected fields"
        ))
    })
}
