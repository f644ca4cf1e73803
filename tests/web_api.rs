//! End-to-end test of the HTTP API: starts the real `animelens serve` with a tiny random-init
//! model on a small gallery, exercises every endpoint (including the feed changing after likes
//! and dislikes), shuts the server down with SIGTERM and restarts it on the same data folder.

mod web_support;

use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;
use web_support::{multipart, sample_image, small_gallery, tiny_model, Server, API_KEY};

fn ids(v: &Value) -> Vec<u64> {
    v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["item"]["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn every_endpoint_end_to_end() {
    every_endpoint_on("");
}

/// The same end-to-end run with the catalogue on Milvus (a `milvus-lite server` on a free port).
#[cfg(feature = "milvus")]
#[test]
fn every_endpoint_end_to_end_on_milvus() {
    let Some(milvus) = web_support::milvus_lite() else {
        return;
    };
    let (milvus, _data) = milvus;
    every_endpoint_on(&web_support::milvus_settings(&milvus));
}

/// The Milvus server going away mid-run gives a clear 503 (with Retry-After, without its
/// address); the service keeps running and answers again once the server is back.
#[cfg(feature = "milvus")]
#[test]
fn milvus_down_is_a_503_and_the_service_recovers() {
    let Some((mut milvus, tmp)) = web_support::milvus_lite() else {
        return;
    };
    let model = tiny_model(tmp.path());
    let gallery = small_gallery(&tmp.path().join("gallery"), 3, 4);
    let config = tmp.path().join("serve.toml");
    std::fs::write(&config, web_support::milvus_settings(&milvus)).unwrap();
    let mut server = Server::start_on(&tmp.path().join("data"), &model, &gallery, Some(&config));
    server.wait_for_log("ingested 12/12 gallery images", Duration::from_secs(1));
    let names = web_support::gallery_characters(&gallery);
    let image = sample_image(&names[0], 0);
    let search = |server: &Server| server.post_image("/api/v1/search?k=3", "image/jpeg", &image);
    assert_eq!(search(&server).status, 200);
    milvus.stop();
    let r = search(&server);
    assert_eq!(r.status, 503, "{}", r.error());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        r.error().contains("milvus server is unavailable"),
        "{}",
        r.error()
    );
    assert!(!r.error().contains("127.0.0.1"), "{}", r.error());
    // Not ready, yet alive: an orchestrator stops routing to it without restarting it.
    let (status, ready) = server.get_json("/readyz");
    assert_eq!(status, 503, "{ready}");
    assert_eq!(server.get_json("/healthz").0, 200);
    milvus.start_again().unwrap();
    let r = search(&server);
    assert_eq!(r.status, 200, "{}", r.error());
    assert_eq!(ids(&r.json()).len(), 3);
    assert_eq!(server.get_json("/readyz").0, 200);
}

/// Every endpoint against a service whose TOML settings file holds `settings`.
fn every_endpoint_on(settings: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let gallery = small_gallery(&tmp.path().join("gallery"), 6, 5);
    let data = tmp.path().join("data");
    let config = tmp.path().join("serve.toml");
    std::fs::write(&config, settings).unwrap();
    let mut server = Server::start_on(&data, &model, &gallery, Some(&config));
    server.wait_for_log("ingested 30/30 gallery images", Duration::from_secs(1));

    // Operations and documentation.
    let (status, health) = server.get_json("/healthz");
    assert_eq!((status, health["items"].as_u64()), (200, Some(30)));
    let (status, ready) = server.get_json("/readyz");
    let backend = if settings.contains("milvus") {
        "milvus"
    } else {
        "embedded"
    };
    assert_eq!((status, ready["backend"].as_str()), (200, Some(backend)));
    let (status, doc) = server.get_json("/api/v1/openapi.json");
    assert_eq!(status, 200);
    for path in [
        "/api/v1/classify",
        "/api/v1/search",
        "/api/v1/items/{id}/similar",
        "/api/v1/characters",
        "/api/v1/characters/{name}/similar",
        "/api/v1/recommend",
        "/api/v1/users/{user}/events",
        "/api/v1/users/{user}/feed",
        "/api/v1/items",
        "/api/v1/items/{id}",
        "/api/v1/items/{id}/thumbnail",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["paths"]["/api/v1/items/{id}"].get("patch").is_some());

    // Characters.
    let (status, chars) = server.get_json("/api/v1/characters");
    assert_eq!(status, 200);
    let names: Vec<String> = serde_json::from_value(chars["characters"].clone()).unwrap();
    assert_eq!(names.len(), 6);
    let (status, similar) =
        server.get_json(&format!("/api/v1/characters/{}/similar?k=3", names[0]));
    assert_eq!(status, 200);
    let similar = similar["similar"].as_array().unwrap();
    assert_eq!(similar.len(), 3);
    assert!(similar.iter().all(|s| s["name"] != names[0].as_str()));
    assert_eq!(server.get_json("/api/v1/characters/nobody/similar").0, 404);

    // Classification: raw body with embedding, and a batched multipart request.
    let image = sample_image(&names[0], 0);
    let r = server.post_image("/api/v1/classify?k=3&embedding=true", "image/jpeg", &image);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let result = &r.json()["results"][0];
    assert_eq!(result["heads"][0]["head"], "character");
    assert_eq!(result["heads"][0]["top"].as_array().unwrap().len(), 3);
    assert_eq!(result["embedding"].as_array().unwrap().len(), 1024);
    assert!(result["character"]["unknown"].is_boolean());
    assert_eq!(
        result["character"]["candidates"].as_array().unwrap().len(),
        3
    );
    let second = sample_image(&names[1], 0);
    let (ct, body) = multipart(&[
        ("image", Some("a.jpg"), &image),
        ("image", Some("b.jpg"), &second),
    ]);
    let r = server.request("POST", "/api/v1/classify", &[("content-type", &ct)], &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["results"].as_array().unwrap().len(), 2);

    // Reverse image search: a gallery image finds itself first.
    let r = server.post_image("/api/v1/search?k=5", "image/jpeg", &image);
    assert_eq!(r.status, 200);
    let hits = r.json();
    assert_eq!(ids(&hits).len(), 5);
    assert!(hits["hits"][0]["score"].as_f64().unwrap() > 0.999);
    assert_eq!(
        hits["hits"][0]["item"]["labels"]["character"],
        names[0].as_str()
    );
    let first_id = ids(&hits)[0];
    let r = server.post_image("/api/v1/search?k=4&flip=true", "image/jpeg", &image);
    assert_eq!((r.status, ids(&r.json()).len()), (200, 4));
    let r = server.post_image(
        &format!("/api/v1/search?k=10&character={}", names[2]),
        "image/jpeg",
        &image,
    );
    let filtered = r.json();
    assert_eq!(ids(&filtered).len(), 5);
    assert!(filtered["hits"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["item"]["labels"]["character"] == names[2].as_str()));

    // Items: metadata, thumbnail, similar items.
    let (status, item) = server.get_json(&format!("/api/v1/items/{first_id}"));
    assert_eq!(status, 200);
    assert_eq!(item["tags"], json!(["split:train"]));
    let thumb = server.request(
        "GET",
        &format!("/api/v1/items/{first_id}/thumbnail"),
        &[],
        b"",
    );
    assert_eq!(thumb.status, 200);
    assert_eq!(thumb.header("content-type"), Some("image/jpeg"));
    assert_eq!(&thumb.body[..2], &[0xFF, 0xD8]);
    let (status, similar) = server.get_json(&format!("/api/v1/items/{first_id}/similar?k=4"));
    assert_eq!(status, 200);
    assert_eq!(ids(&similar).len(), 4);
    assert!(!ids(&similar).contains(&first_id));

    // Recommendations from ids (both strategies) and from an uploaded image.
    let all = ids(&server
        .post_image("/api/v1/search?k=30", "image/jpeg", &image)
        .json());
    for strategy in ["average_vector", "best_score"] {
        let r = server.post_json(
            "/api/v1/recommend",
            &json!({"positive": [all[0]], "negative": [all[29]], "strategy": strategy, "k": 5, "exclude": [all[1]]}),
        );
        assert_eq!(
            r.status,
            200,
            "{strategy}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let got = ids(&r.json());
        assert_eq!(got.len(), 5);
        assert!(!got.contains(&all[0]) && !got.contains(&all[29]) && !got.contains(&all[1]));
    }
    let (ct, body) = multipart(&[
        (
            "request",
            None,
            br#"{"k": 3, "filter": {"labels": {"character": "ame"}}}"#,
        ),
        ("positive", Some("p.jpg"), &second),
    ]);
    let r = server.request("POST", "/api/v1/recommend", &[("content-type", &ct)], &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["hits"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["item"]["labels"]["character"] == "ame"));

    // Feeds: cold start, then likes and dislikes change it; seen items never come back.
    let (status, cold) = server.get_json("/api/v1/users/alice/feed?k=6");
    assert_eq!(status, 200);
    let cold = ids(&cold);
    assert_eq!(cold.len(), 6);
    let liked = [all[3], all[4]];
    for id in liked {
        let r = server.post_json(
            "/api/v1/users/alice/events",
            &json!({"item": id, "kind": "like"}),
        );
        assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    }
    let r = server.post_json(
        "/api/v1/users/alice/events",
        &json!({"item": all[25], "kind": "dislike"}),
    );
    assert_eq!(r.status, 204);
    let r = server.post_json(
        "/api/v1/users/alice/events",
        &json!({"item": cold[0], "kind": "view"}),
    );
    assert_eq!(r.status, 204);
    let warm = ids(&server.get_json("/api/v1/users/alice/feed?k=6").1);
    assert_eq!(warm.len(), 6);
    assert_ne!(
        warm, cold,
        "the feed did not change after likes and dislikes"
    );
    let seen: HashSet<u64> = [all[3], all[4], all[25], cold[0]].into();
    assert!(warm.iter().all(|id| !seen.contains(id)));
    let r = server.post_json(
        "/api/v1/users/alice/events",
        &json!({"item": 999_999, "kind": "like"}),
    );
    assert_eq!(r.status, 404);

    // Writes need the key.
    let new_image = sample_image(&names[5], 7);
    let r = server.post_image(
        "/api/v1/items?character=newcomer&tags=upload",
        "image/jpeg",
        &new_image,
    );
    assert_eq!(r.status, 401);
    let key = [("content-type", "image/jpeg"), ("x-api-key", API_KEY)];
    let r = server.request(
        "POST",
        "/api/v1/items?character=newcomer&tags=upload,test",
        &key,
        &new_image,
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let added = r.json()["items"][0].clone();
    assert_eq!(added["duplicate"], false);
    let new_id = added["id"].as_u64().unwrap();
    let r = server.request("POST", "/api/v1/items", &key, &new_image);
    assert_eq!(
        r.json()["items"][0],
        json!({"id": new_id, "duplicate": true})
    );
    let (_, item) = server.get_json(&format!("/api/v1/items/{new_id}"));
    assert_eq!(item["labels"]["character"], "newcomer");
    assert_eq!(item["tags"], json!(["upload", "test"]));
    let (ct, body) = multipart(&[
        ("character", None, b"multi"),
        ("image", Some("m.jpg"), &sample_image(&names[5], 8)),
    ]);
    let r = server.request(
        "POST",
        "/api/v1/items",
        &[("content-type", &ct), ("x-api-key", API_KEY)],
        &body,
    );
    assert_eq!(r.status, 201);
    let multi_id = r.json()["items"][0]["id"].as_u64().unwrap();
    assert_eq!(
        server.get_json(&format!("/api/v1/items/{multi_id}")).1["source"],
        "m.jpg"
    );

    // Relabelling: PATCH replaces the parts given, needs the key, and moves the item between
    // character filters.
    let path = format!("/api/v1/items/{new_id}");
    let patch = json!({"labels": {"character": "renamed", "work": "indie"}}).to_string();
    let json_ct = ("content-type", "application/json");
    assert_eq!(
        server
            .request("PATCH", &path, &[json_ct], patch.as_bytes())
            .status,
        401
    );
    let keyed = [json_ct, ("x-api-key", API_KEY)];
    let r = server.request("PATCH", &path, &keyed, patch.as_bytes());
    assert_eq!(r.status, 200, "{}", r.error());
    assert_eq!(
        r.json()["labels"],
        json!({"character": "renamed", "work": "indie"})
    );
    assert_eq!(
        r.json()["tags"],
        json!(["upload", "test"]),
        "tags were not sent, so they stay"
    );
    let r = server.request("PATCH", &path, &keyed, br#"{"tags": []}"#);
    assert_eq!((r.status, r.json()["tags"].clone()), (200, json!([])));
    for (body, status) in [(&br#"{}"#[..], 400), (br#"{"colour": "red"}"#, 400)] {
        let r = server.request("PATCH", &path, &keyed, body);
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(body));
    }
    let missing = server.request("PATCH", "/api/v1/items/999999", &keyed, patch.as_bytes());
    assert_eq!(missing.status, 404);
    let (_, characters) = server.get_json("/api/v1/characters");
    assert!(
        characters.to_string().contains("renamed"),
        "the relabelled item makes a character: {characters}"
    );

    assert_eq!(server.request("DELETE", &path, &[], b"").status, 401);
    assert_eq!(
        server
            .request("DELETE", &path, &[("x-api-key", API_KEY)], b"")
            .status,
        204
    );
    assert_eq!(server.get_json(&path).0, 404);
    assert_eq!(
        server
            .request("DELETE", &path, &[("x-api-key", API_KEY)], b"")
            .status,
        404
    );

    // Enrolment of a new character from a few images.
    let (ct, body) = multipart(&[
        ("name", None, b"enrolled"),
        ("image", Some("e1.jpg"), &sample_image(&names[5], 9)),
        ("image", Some("e2.jpg"), &sample_image(&names[4], 9)),
    ]);
    let r = server.request(
        "POST",
        "/api/v1/characters",
        &[("content-type", &ct)],
        &body,
    );
    assert_eq!(r.status, 401);
    let r = server.request(
        "POST",
        "/api/v1/characters",
        &[("content-type", &ct), ("x-api-key", API_KEY)],
        &body,
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 2);
    let (_, chars) = server.get_json("/api/v1/characters");
    assert!(chars["characters"]
        .as_array()
        .unwrap()
        .contains(&json!("enrolled")));

    // Metrics.
    let metrics = server.request("GET", "/metrics", &[], b"");
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(text.contains(
        "animelens_http_requests_total{route=\"/api/v1/search\",method=\"POST\",status=\"200\"}"
    ));
    assert!(text.contains(
        "animelens_http_request_duration_seconds_bucket{route=\"/api/v1/items/{id}/similar\""
    ));
    assert!(text.contains("animelens_inference_queue_depth 0"));
    assert!(text.contains("animelens_catalog_items 33"), "{text}");

    // Graceful shutdown saves the index; a restart keeps everything and does not re-ingest.
    let (status, log) = server.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(
        log.iter().any(|l| l.contains("catalogue saved")),
        "{}",
        log.join("\n")
    );
    let mut again = Server::start_on(&data, &model, &gallery, Some(&config));
    assert_eq!(again.get_json("/healthz").1["items"], 33);
    assert!(!again.lines.iter().any(|l| l.contains("ingesting")));
    again.wait_for_log("catalogue open", Duration::from_secs(1));
}

/// A service told `graph_precision = "int8"` (here in its TOML file; the environment variable is
/// checked in `web::config`) searches an int8 graph yet answers exact cosines (a gallery image
/// finds itself at 1.0, which the int8 estimate alone would not give), saves that graph, and a CLI
/// command opening the catalogue afterwards keeps it instead of rebuilding it as f32.
#[test]
fn int8_graph_service_answers_exact_scores_and_the_cli_keeps_it() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let gallery = small_gallery(&tmp.path().join("gallery"), 4, 5);
    let data = tmp.path().join("data");
    let config = tmp.path().join("serve.toml");
    std::fs::write(&config, "graph_precision = \"int8\"\n").unwrap();
    let mut server = Server::start_on(&data, &model, &gallery, Some(&config));
    server.wait_for_log("ingested 20/20 gallery images", Duration::from_secs(1));
    let names = web_support::gallery_characters(&gallery);
    let image = sample_image(&names[0], 0);
    let r = server.post_image("/api/v1/search?k=5", "image/jpeg", &image);
    assert_eq!(r.status, 200);
    let hits = r.json();
    let score = hits["hits"][0]["score"].as_f64().unwrap();
    assert!((score - 1.0).abs() < 1e-5, "{hits}");
    let scores: Vec<f64> = hits["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    let (status, _) = server.terminate();
    assert!(status.success());
    let db = data.join("catalog");
    let stats = web_support::ok(&["index", "--db", db.to_str().unwrap(), "stats"]);
    assert!(stats.contains("graph vectors:  int8"), "{stats}");
}
