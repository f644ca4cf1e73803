//! End-to-end test of bad input: each malformed request gets a JSON error with the right status
//! (empty body, truncated image, not an image, unsupported format, a 50,000×50,000 header bomb,
//! too large a body, wrong content type, unknown item, malformed JSON, missing or wrong API key),
//! and afterwards the server still answers a normal request.

mod web_support;

use web_support::{multipart, sample_image, small_gallery, tiny_model, Server, API_KEY};

/// CRC-32 (IEEE) as PNG chunks use it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Appends a PNG chunk.
fn chunk(png: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    png.extend((data.len() as u32).to_be_bytes());
    png.extend(&body);
    png.extend(crc32(&body).to_be_bytes());
}

/// A small PNG whose header claims `side`×`side` pixels (a decompression bomb's header) with a
/// few bytes of image data.
fn png_bomb(side: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = side.to_be_bytes().to_vec();
    ihdr.extend(side.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    chunk(&mut png, b"IHDR", &ihdr);
    // zlib stream with one stored block of 16 zero bytes, then its Adler-32 (1 + 0, 16 * 1).
    let mut idat = vec![0x78, 0x01, 0x01, 16, 0, !16u8, 0xFF];
    idat.extend([0u8; 16]);
    idat.extend([0x00, 0x10, 0x00, 0x01]);
    chunk(&mut png, b"IDAT", &idat);
    chunk(&mut png, b"IEND", b"");
    png
}

#[test]
fn bad_requests_get_json_errors_and_the_server_stays_healthy() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let gallery = small_gallery(&tmp.path().join("gallery"), 2, 3);
    let data = tmp.path().join("data");
    // Limits from a TOML config file (the API key comes from ANIMELENS_API_KEY).
    let config = tmp.path().join("serve.toml");
    std::fs::write(
        &config,
        "max_upload_bytes = 100000\nmax_images_per_request = 4\n",
    )
    .unwrap();
    let server = Server::start_on(&data, &model, &gallery, Some(&config));
    let image = sample_image("ame", 0);
    assert!(image.len() < 100_000);

    let check = |what: &str, r: web_support::Response, status: u16, needle: &str| {
        assert_eq!(
            r.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let message = r.error();
        assert!(
            message.to_lowercase().contains(needle),
            "{what}: error {message:?} lacks {needle:?}"
        );
    };

    check(
        "empty body",
        server.post_image("/api/v1/search", "image/jpeg", b""),
        400,
        "empty",
    );
    check(
        "truncated image",
        server.post_image("/api/v1/classify", "image/jpeg", &image[..image.len() / 3]),
        422,
        "decode",
    );
    check(
        "not an image",
        server.post_image(
            "/api/v1/search",
            "image/png",
            b"hello, this is plain text and not a picture",
        ),
        422,
        "decode",
    );
    check(
        "unsupported format",
        server.post_image(
            "/api/v1/search",
            "image/tiff",
            b"II*\x00\x08\x00\x00\x00\x00\x00\x00\x00",
        ),
        415,
        "tiff",
    );
    check(
        "decompression bomb",
        server.post_image("/api/v1/classify", "image/png", &png_bomb(50_000)),
        422,
        "50000x50000",
    );
    let (ct, body) = multipart(&[
        ("image", Some("ok.jpg"), &image),
        ("image", Some("bomb.png"), &png_bomb(50_000)),
    ]);
    check(
        "bomb as the second of two images",
        server.request("POST", "/api/v1/search", &[("content-type", &ct)], &body),
        422,
        "image 2 of 2",
    );
    let tiny = &image[..0];
    let (ct, body) = multipart(&[("image", Some("1.jpg"), tiny); 5]);
    check(
        "more images than max_images_per_request",
        server.request("POST", "/api/v1/search", &[("content-type", &ct)], &body),
        400,
        "over the limit of 4",
    );
    check(
        "body over the limit",
        server.post_image("/api/v1/search", "image/jpeg", &vec![0xFFu8; 150_000]),
        413,
        "limit",
    );
    let (ct, body) = multipart(&[("image", Some("big.jpg"), &vec![0xFFu8; 150_000])]);
    check(
        "multipart over the limit",
        server.request("POST", "/api/v1/classify", &[("content-type", &ct)], &body),
        413,
        "limit",
    );
    check(
        "wrong content type",
        server.post_image("/api/v1/search", "text/plain", &image),
        415,
        "content type",
    );
    check(
        "JSON to an event with the wrong type",
        server.post_image("/api/v1/users/bob/events", "text/plain", b"{}"),
        415,
        "json",
    );
    check(
        "unknown item",
        server.request("GET", "/api/v1/items/999999", &[], b""),
        404,
        "no item",
    );
    check(
        "unknown item's neighbours",
        server.request("GET", "/api/v1/items/999999/similar", &[], b""),
        404,
        "999999",
    );
    check(
        "non-numeric id",
        server.request("GET", "/api/v1/items/abc", &[], b""),
        404,
        "invalid path",
    );
    check(
        "unknown route",
        server.request("GET", "/api/v1/nothing", &[], b""),
        404,
        "openapi",
    );
    check(
        "malformed JSON",
        server.request(
            "POST",
            "/api/v1/recommend",
            &[("content-type", "application/json")],
            b"{\"positive\": [1,",
        ),
        400,
        "malformed json",
    );
    check(
        "unknown JSON field",
        server.post_json(
            "/api/v1/users/bob/events",
            &serde_json::json!({"item": 1, "kind": "love"}),
        ),
        400,
        "malformed json",
    );
    check(
        "k out of range",
        server.request("GET", "/api/v1/items/1/similar?k=0", &[], b""),
        400,
        "k = 0",
    );
    check(
        "bad query",
        server.request("GET", "/api/v1/items/1/similar?k=many", &[], b""),
        400,
        "query",
    );
    check(
        "missing API key",
        server.post_image("/api/v1/items", "image/jpeg", &image),
        401,
        "x-api-key",
    );
    check(
        "wrong API key",
        server.request("DELETE", "/api/v1/items/1", &[("x-api-key", "guess")], b""),
        401,
        "right key",
    );
    check(
        "image URL (disabled)",
        server.post_json(
            "/api/v1/classify",
            &serde_json::json!({"image_url": "http://example.com/a.png"}),
        ),
        400,
        "disabled",
    );

    // Still healthy.
    let r = server.post_image("/api/v1/search?k=3", "image/jpeg", &image);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["hits"].as_array().unwrap().len(), 3);
    let r = server.request(
        "POST",
        "/api/v1/items?character=ok",
        &[("content-type", "image/jpeg"), ("x-api-key", API_KEY)],
        &sample_image("bae", 5),
    );
    assert_eq!(r.status, 201);
    assert_eq!(server.get_json("/healthz").0, 200);
}
