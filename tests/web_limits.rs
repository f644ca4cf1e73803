//! End-to-end test of the service's limits, through the real binary: images that once aborted the
//! server (a 39,000,000 × 1 and a 20,000,000 × 2 PNG, under the pixel limit) are refused with 422;
//! a burst of 6300 × 6300 PNGs keeps the process's peak resident memory (VmHWM from
//! /proc/PID/status) under the `memory_budget_mib` setting; oversized recommendation lists and
//! unsafe names are refused; `HEAD /healthz`, the favicon and the UI's security headers answer;
//! logs sent to a pipe carry no ANSI colour; a body that does not arrive within
//! `request_timeout_secs` is answered 408.

mod web_support;

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};
use web_support::{multipart, small_gallery, tiny_model, Server, API_KEY};

/// The budget the test server is configured with (`memory_budget_mib`).
const MEMORY_BUDGET_MIB: u64 = 1024;

/// A black greyscale PNG of `width` × `height` pixels (compresses to a few hundred KB at most).
fn black_png(width: u32, height: u32) -> Vec<u8> {
    let pixels = vec![0u8; width as usize * height as usize];
    let mut png = Vec::new();
    PngEncoder::new_with_quality(&mut png, CompressionType::Best, FilterType::NoFilter)
        .write_image(&pixels, width, height, ExtendedColorType::L8)
        .unwrap();
    png
}

/// A `/proc/PID/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

#[test]
fn no_upload_crashes_the_server_or_passes_the_memory_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let gallery = small_gallery(&tmp.path().join("gallery"), 2, 2);
    let config = tmp.path().join("serve.toml");
    std::fs::write(
        &config,
        format!("memory_budget_mib = {MEMORY_BUDGET_MIB}\n"),
    )
    .unwrap();
    let data = tmp.path().join("data");
    let mut server = Server::start_on(&data, &model, &gallery, Some(&config));

    // Strips under the pixel limit: refused from the header, the server lives on.
    for (path, (w, h)) in [
        ("/api/v1/search", (39_000_000, 1)),
        ("/api/v1/classify", (20_000_000, 2)),
    ] {
        let r = server.post_image(path, "image/png", &black_png(w, h));
        assert_eq!(r.status, 422, "{w}x{h} to {path}: {}", r.error());
        assert!(r.error().contains("32 times"), "{}", r.error());
    }

    // A burst of big pictures (16 per request) stays under the budget.
    let big = black_png(6300, 6300);
    let parts: Vec<(&str, Option<&str>, &[u8])> = (0..16)
        .map(|_| ("image", Some("big.png"), big.as_slice()))
        .collect();
    let (content_type, body) = multipart(&parts);
    for _ in 0..2 {
        let r = server.post_image("/api/v1/classify", &content_type, &body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let peak_mib = status_kib(server.pid(), "VmHWM:") / 1024;
    eprintln!("peak RSS after 32 images of 6300x6300: {peak_mib} MiB");
    assert!(
        peak_mib <= MEMORY_BUDGET_MIB,
        "peak RSS {peak_mib} MiB over the budget of {MEMORY_BUDGET_MIB} MiB"
    );

    // Lists and names are bounded.
    let ids: Vec<u64> = (1..=200_000).collect();
    let huge = server.post_json("/api/v1/recommend", &serde_json::json!({ "positive": ids }));
    assert_eq!(huge.status, 413, "{}", huge.error());
    let many = server.post_json(
        "/api/v1/recommend",
        &serde_json::json!({ "positive": (1..=100).collect::<Vec<u64>>() }),
    );
    assert_eq!(many.status, 400, "{}", many.error());
    assert!(many.error().contains("at most 64"), "{}", many.error());
    let png = black_png(64, 64);
    let long = "x".repeat(200);
    for name in ["nul\0name", "../../etc", long.as_str()] {
        let (ct, body) = multipart(&[
            ("name", None, name.as_bytes()),
            ("image", Some("a.png"), png.as_slice()),
        ]);
        let r = server.request(
            "POST",
            "/api/v1/characters",
            &[("content-type", &ct), ("x-api-key", API_KEY)],
            &body,
        );
        assert_eq!(
            r.status,
            400,
            "{name:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }

    // Operations and UI hygiene.
    assert_eq!(server.request("HEAD", "/healthz", &[], b"").status, 200);
    let (status, health) = server.get_json("/healthz");
    assert_eq!(status, 200);
    assert!(health["max_k"].as_u64().is_some(), "{health}");
    assert_eq!(server.request("GET", "/favicon.ico", &[], b"").status, 200);
    let page = server.request("GET", "/", &[], b"");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert!(page
        .header("content-security-policy")
        .is_some_and(|c| c.contains("default-src 'self'")));
    server.wait_for_log("catalogue open", std::time::Duration::from_secs(5));
    assert!(
        server.lines.iter().all(|l| !l.contains('\u{1b}')),
        "ANSI colour codes in piped logs"
    );
}

#[test]
fn a_body_sent_too_slowly_is_answered_408_and_the_server_lives_on() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let gallery = small_gallery(&tmp.path().join("gallery"), 2, 2);
    let config = tmp.path().join("serve.toml");
    std::fs::write(&config, "request_timeout_secs = 1\n").unwrap();
    let server = Server::start_on(&tmp.path().join("data"), &model, &gallery, Some(&config));

    // Headers promise 1,000 bytes; 10 arrive, then nothing.
    let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "POST /api/v1/search HTTP/1.1\r\nHost: {}\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n0123456789",
        server.addr
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("1 s"),
        "the answer names the limit: {answer}"
    );

    let r = server.post_image("/api/v1/search", "image/png", &black_png(8, 8));
    assert_eq!(r.status, 200, "{}", r.error());
}
