//! The API's errors and how they become HTTP answers: a status code and a JSON body
//! `{"error": "what was wrong and what to do"}`. Catalogue and embedder errors are mapped here so
//! that handlers only use `?`. Storage failures (full disk, unwritable folder, sled errors,
//! damaged records) are logged in full but answered with a plain message: their text holds
//! absolute paths and raw OS errors, which are the operator's business, not the client's.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use animelens_index::CatalogError;
use animelens_models::EmbedError;

/// Seconds a client is told to wait when the inference queue is full.
pub const RETRY_AFTER_SECS: u32 = 1;

/// An error answered to the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong API key on a write endpoint (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The item, character or route does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what is stored, e.g. a video added twice (409).
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than the configured limit (413).
    #[error("request body is larger than the limit of {limit} bytes; send a smaller image (or resize it first)")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The client took longer than the configured time to send the body (408).
    #[error(
        "the request body did not arrive within {secs} s; send it faster or in a smaller request"
    )]
    RequestTimeout {
        /// The limit in seconds.
        secs: u64,
    },
    /// The content type or image format is not accepted (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The image cannot be used: undecodable, truncated, or too many pixels (422).
    #[error("{0}")]
    BadImage(String),
    /// The inference queue is full (503 with Retry-After).
    #[error("the server is busy: the inference queue is full; retry in {RETRY_AFTER_SECS} s")]
    Busy,
    /// A catalogue error.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Anything else (500).
    #[error("internal error: {0}; the request was not completed, retry it or report a bug")]
    Internal(String),
}

impl ApiError {
    /// Maps one image's embedding failure, naming the image by its position when there are several.
    pub fn from_embed(err: EmbedError, index: usize, count: usize) -> Self {
        let which = if count > 1 {
            format!("image {} of {count}: ", index + 1)
        } else {
            String::new()
        };
        match err {
            EmbedError::Decode(_) | EmbedError::TooLarge { .. } => {
                ApiError::BadImage(format!("{which}{err}"))
            }
            EmbedError::Unsupported(_) => ApiError::UnsupportedMediaType(format!("{which}{err}")),
            EmbedError::Inference(_) => ApiError::Internal(format!("{which}{err}")),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BadImage(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Catalog(e) => match e {
                CatalogError::UnknownItem { .. } | CatalogError::UnknownCharacter { .. } => {
                    StatusCode::NOT_FOUND
                }
                CatalogError::InvalidArgument { .. } | CatalogError::BadVector { .. } => {
                    StatusCode::BAD_REQUEST
                }
                CatalogError::DiskFull { .. } => StatusCode::INSUFFICIENT_STORAGE,
                CatalogError::StorageUnavailable { .. }
                | CatalogError::BackendUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!("{self}");
        }
        let message = match self {
            ApiError::Catalog(CatalogError::DiskFull { .. }) => {
                "the server's disk is full: this write was not stored (earlier data is intact); \
                 retry later"
                    .to_string()
            }
            ApiError::Catalog(CatalogError::BackendUnavailable { backend, .. }) => format!(
                "the catalogue's {backend} server is unavailable: the request was not completed; \
                 retry in {RETRY_AFTER_SECS} s (the server log has the details)"
            ),
            ApiError::Catalog(_) if status.is_server_error() => {
                "the catalogue could not be read or written: the request was not completed; retry \
                 later (the server log has the details)"
                    .to_string()
            }
            _ => self.to_string(),
        };
        let mut res = HttpResponse::build(status);
        if let ApiError::Busy
        | ApiError::Catalog(
            CatalogError::StorageUnavailable { .. } | CatalogError::BackendUnavailable { .. },
        ) = self
        {
            res.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()));
        }
        res.json(serde_json::json!({ "error": message }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    #[actix_web::test]
    async fn errors_are_json_with_status() {
        let res = ApiError::Busy.error_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "1");
        let body = to_bytes(res.into_body()).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("busy"));
        let unknown = ApiError::from(CatalogError::UnknownItem { id: 3 });
        assert_eq!(unknown.status_code(), StatusCode::NOT_FOUND);
        let bomb = ApiError::from_embed(
            EmbedError::TooLarge {
                width: 50_000,
                height: 50_000,
                limit: 10,
            },
            1,
            2,
        );
        assert_eq!(bomb.status_code(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(bomb.to_string().starts_with("image 2 of 2"));
    }

    #[actix_web::test]
    async fn storage_errors_hide_paths_and_os_messages() {
        let full = ApiError::from(CatalogError::DiskFull {
            dir: "/srv/secret/catalog".into(),
            source: std::io::Error::from_raw_os_error(28),
        });
        let res = full.error_response();
        assert_eq!(res.status(), StatusCode::INSUFFICIENT_STORAGE);
        let body = String::from_utf8(to_bytes(res.into_body()).await.unwrap().to_vec()).unwrap();
        assert!(body.contains("disk is full"), "{body}");
        assert!(
            !body.contains("/srv") && !body.contains("os error"),
            "{body}"
        );
        let damaged = ApiError::from(CatalogError::Corrupt {
            dir: "/srv/secret/catalog".into(),
            what: "items/3".into(),
        });
        let body = to_bytes(damaged.error_response().into_body())
            .await
            .unwrap();
        assert!(!String::from_utf8_lossy(&body).contains("/srv"));
    }

    #[actix_web::test]
    async fn a_remote_backend_down_is_a_503_that_hides_its_address() {
        let down = ApiError::from(CatalogError::BackendUnavailable {
            backend: "milvus",
            setting: "milvus_uri",
            reason: "transport error connecting to http://10.0.0.7:19530".into(),
        });
        let res = down.error_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "1");
        let body = String::from_utf8(to_bytes(res.into_body()).await.unwrap().to_vec()).unwrap();
        assert!(body.contains("milvus server is unavailable"), "{body}");
        assert!(!body.contains("10.0.0.7"), "{body}");
    }
}
