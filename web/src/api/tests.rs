//! In-process tests of the routes with a fake embedder (vectors derived from the image bytes) and
//! a temporary catalogue: no network, no trained model.

use crate::config::Settings;
use crate::inference::InferencePool;
use crate::metrics::Metrics;
use crate::state::AppState;
use actix_web::{test, web, App};
use animelens_index::{Catalog, ModelTag, NewItem, OpenOptions};
use animelens_models::generalisation::ScoreCalibration;
use animelens_models::{CopyViews, EmbedError, Embedder, HeadPrediction, LabelScore, Prediction};
use image::RgbImage;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

/// Embeds an image as its first four bytes (plus one), with a fixed one-label head.
struct FakeEmbedder;

impl Embedder for FakeEmbedder {
    fn dim(&self) -> usize {
        4
    }
    fn fingerprint(&self) -> String {
        "fake".into()
    }
    fn heads(&self) -> Vec<String> {
        vec!["character".into()]
    }
    /// The fake "format": a 4×1 image whose red values are the first four bytes.
    fn decode(&self, bytes: &[u8]) -> Result<RgbImage, EmbedError> {
        Ok(RgbImage::from_fn(4, 1, |x, _| {
            image::Rgb([*bytes.get(x as usize).unwrap_or(&0), 0, 0])
        }))
    }
    fn predict_images(
        &self,
        images: &[RgbImage],
        _top_k: usize,
        _copies: Option<CopyViews>,
    ) -> Result<Vec<Prediction>, EmbedError> {
        Ok(images
            .iter()
            .map(|img| Prediction {
                copies: Vec::new(),
                heads: vec![HeadPrediction {
                    head: "character".into(),
                    top: vec![LabelScore {
                        label: "a".into(),
                        probability: 1.0,
                    }],
                }],
                embedding: (0..4)
                    .map(|x| img.get_pixel(x, 0)[0] as f32 + 1.0)
                    .collect(),
            })
            .collect())
    }
}

fn state(dir: &std::path::Path) -> web::Data<AppState> {
    let catalog = Catalog::open(
        dir,
        OpenOptions::new(ModelTag {
            fingerprint: "fake".into(),
            dim: 4,
        }),
    )
    .unwrap();
    let items = [
        ("a", [9.0, 1.0, 1.0, 1.0]),
        ("a", [8.0, 2.0, 1.0, 1.0]),
        ("b", [1.0, 1.0, 9.0, 1.0]),
    ]
    .iter()
    .map(|(c, v)| NewItem {
        source: format!("{c}.png"),
        labels: [("character".to_string(), c.to_string())].into(),
        vector: v.to_vec(),
        ..NewItem::default()
    })
    .collect();
    catalog.add_batch(items).unwrap();
    let mut settings = Settings::with_paths(PathBuf::from("fake"), None);
    settings.api_key = Some("k".into());
    web::Data::new(AppState {
        catalog: Arc::new(catalog),
        pool: InferencePool::start(Arc::new(FakeEmbedder), 1, 4, 4),
        settings,
        metrics: Metrics::default(),
        similarity: Some(ScoreCalibration { a: 10.0, b: -8.0 }),
    })
}

#[actix_web::test]
async fn routes_answer_with_the_catalogue_and_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let app = test::init_service(
        App::new()
            .app_data(state(dir.path()))
            .configure(super::configure),
    )
    .await;
    // An "image" whose fake embedding points at the two items of character a.
    let req = test::TestRequest::post()
        .uri("/api/v1/search?k=2")
        .insert_header(("content-type", "image/png"))
        .set_payload(vec![200u8, 10, 0, 0])
        .to_request();
    let body: Value = test::call_and_read_body_json(&app, req).await;
    let hits = body["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 2);
    assert!(hits.iter().all(|h| h["item"]["labels"]["character"] == "a"));
    // Searches carry the calibrated confidence of each cosine: 1 / (1 + e^-(10·cos − 8)).
    for h in hits {
        let cos = h["score"].as_f64().unwrap();
        let expected = 1.0 / (1.0 + (-(10.0 * cos - 8.0)).exp());
        assert!(
            (h["confidence"].as_f64().unwrap() - expected).abs() < 1e-5,
            "{h}"
        );
    }

    let req = test::TestRequest::post()
        .uri("/api/v1/classify")
        .insert_header(("content-type", "image/png"))
        .set_payload(vec![0u8, 0, 200, 0])
        .to_request();
    let body: Value = test::call_and_read_body_json(&app, req).await;
    assert_eq!(body["results"][0]["character"]["name"], "b");

    let req = test::TestRequest::get()
        .uri("/api/v1/characters/a/similar")
        .to_request();
    let body: Value = test::call_and_read_body_json(&app, req).await;
    assert_eq!(body["similar"][0]["name"], "b");

    let req = test::TestRequest::delete()
        .uri("/api/v1/items/1")
        .to_request();
    let res = test::call_service(&app, req).await;
    assert_eq!(res.status(), 401);
    let req = test::TestRequest::get().uri("/api/v1/nowhere").to_request();
    let res = test::call_service(&app, req).await;
    assert_eq!(res.status(), 404);
    let body: Value = test::read_body_json(res).await;
    assert!(body["error"].as_str().unwrap().contains("openapi.json"));

    let req = test::TestRequest::get()
        .uri("/api/v1/openapi.json")
        .to_request();
    let doc: Value = test::call_and_read_body_json(&app, req).await;
    assert!(doc["paths"]["/api/v1/search"]["post"].is_object());
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
}
