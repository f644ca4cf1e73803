//! The JSON API under `/api/v1`, one file per group (as Qdrant's `src/actix/api/`): each handler
//! parses the request, calls the catalogue or the inference pool, and maps errors. This module
//! wires the routes, the JSON error answers for bad paths and query strings, and the OpenAPI
//! document served at `/api/v1/openapi.json`.

pub mod audit;
pub mod characters;
pub mod classify;
pub mod items;
pub mod recommend;
pub mod search;
pub mod system;
#[cfg(test)]
mod tests;
pub mod tracemoe;
pub mod types;
pub mod users;
pub mod videos;

use crate::error::ApiError;
use actix_web::{web, HttpResponse};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The OpenAPI document of the service.
#[derive(OpenApi)]
#[openapi(
    info(title = "AnimeLens API", description = "Anime character recognition, reverse image search, lookalike characters and recommendation feeds."),
    paths(
        classify::classify,
        search::search_image,
        search::similar_items,
        audit::audit,
        characters::list,
        characters::similar,
        characters::enrol,
        recommend::recommend,
        users::record_event,
        users::feed,
        items::add,
        items::get_item,
        items::thumbnail,
        items::remove,
        items::update,
        videos::add,
        videos::recognise,
        videos::search_scene,
        videos::scene_image,
        videos::scene_clip,
        system::healthz,
        system::readyz,
        system::metrics,
    ),
    modifiers(&ApiKeyScheme)
)]
pub struct ApiDoc;

/// Declares the `X-Api-Key` header scheme of write endpoints.
struct ApiKeyScheme;

impl Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "api_key",
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Api-Key"))),
            );
    }
}

/// Serves the OpenAPI document.
async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

/// Any path under `/api/v1` that names no endpoint.
async fn no_route() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(
        "no such endpoint (or wrong method); the endpoints are listed in /api/v1/openapi.json"
            .into(),
    ))
}

/// Registers the `/api/v1` scope and the operations endpoints.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(system::healthz))
        .route("/healthz", web::head().to(system::healthz))
        .route("/readyz", web::get().to(system::readyz))
        .route("/metrics", web::get().to(system::metrics))
        .route("/search", web::get().to(tracemoe::search))
        .route("/search", web::post().to(tracemoe::search))
        .route("/me", web::get().to(tracemoe::me))
        .service(
            web::scope("/api/v1")
                .app_data(web::QueryConfig::default().error_handler(|e, _| {
                    ApiError::BadRequest(format!("invalid query string: {e}")).into()
                }))
                .app_data(web::PathConfig::default().error_handler(|e, _| {
                    ApiError::NotFound(format!("invalid path: {e}; item ids are positive integers"))
                        .into()
                }))
                .route("/openapi.json", web::get().to(openapi))
                .route("/healthz", web::get().to(system::healthz))
                .route("/healthz", web::head().to(system::healthz))
                .route("/readyz", web::get().to(system::readyz))
                .service(classify::classify)
                .service(search::search_image)
                .service(search::similar_items)
                .service(audit::audit)
                .service(characters::list)
                .service(characters::similar)
                .service(characters::enrol)
                .service(recommend::recommend)
                .service(users::record_event)
                .service(users::feed)
                .service(items::add)
                .service(items::thumbnail)
                .service(items::get_item)
                .service(items::remove)
                .service(items::update)
                .service(videos::add)
                .service(videos::recognise)
                .service(videos::search_scene)
                .service(videos::scene_image)
                .service(videos::scene_clip)
                .default_service(web::to(no_route)),
        );
}
