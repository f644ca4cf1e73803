//! End-to-end test of the web UI in Debian's headless Chromium, driven over the DevTools
//! protocol on a pipe (`--remote-debugging-pipe`: NUL-separated JSON on fds 3 and 4, so no
//! WebSocket client is needed): pick an image, see the verdict and lookalikes, click a result to
//! search from it, like an item and see the "for you" feed change, then upload a catalogued
//! picture and see the "possible copy of …" panel show its original. Saves a screenshot to
//! `$ANIMELENS_UI_SCREENSHOT` when set (that is how `docs/screenshots/ui.png` is made). Skips (and passes) when no Chromium binary is installed.

mod web_support;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use web_support::{small_gallery, tiny_model, Server};

/// The Chromium binary, if installed.
fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|dir| Path::new(dir).join(name))
                .find(|p| p.is_file())
        })
}

/// A headless Chromium page driven over the DevTools pipe.
struct Browser {
    child: Child,
    input: ChildStdin,
    output: mpsc::Receiver<Value>,
    next_id: u64,
    session: String,
}

impl Browser {
    fn launch(binary: &Path, profile: &Path) -> Browser {
        // bash moves our stdin/stdout pipes to fds 3/4, where Chromium expects the protocol.
        let script = format!(
            "exec '{}' --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
             --remote-debugging-pipe --user-data-dir='{}' --window-size=1400,950 about:blank \
             3<&0 4>&1 0</dev/null 1>/dev/null",
            binary.display(),
            profile.display()
        );
        let mut child = Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let input = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            while reader
                .read_until(0, &mut buf)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                buf.pop();
                if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
                buf.clear();
            }
        });
        let mut browser = Browser {
            child,
            input,
            output,
            next_id: 0,
            session: String::new(),
        };
        let target = browser.call("Target.createTarget", json!({"url": "about:blank"}));
        let attached = browser.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        for domain in ["Page.enable", "Runtime.enable", "DOM.enable"] {
            browser.call(domain, json!({}));
        }
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1400, "height": 950, "deviceScaleFactor": 1, "mobile": false}),
        );
        browser
    }

    /// Sends a command (to the page session once attached) and returns its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.input.write_all(&bytes).unwrap();
        self.input.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .output
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer from chromium to {method}"));
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method} failed: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates JavaScript in the page and returns its (JSON) value.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// Polls `expression` until it is truthy.
    fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.eval(expression);
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ids of the cards in the grid `grid`.
    fn card_ids(&mut self, grid: &str) -> Vec<u64> {
        serde_json::from_value(self.eval(&format!(
            "[...document.querySelectorAll('#{grid} .card')].map(c => Number(c.dataset.id))"
        )))
        .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &c)| acc | (value(c) as u32) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn ui_upload_click_like_and_feed() {
    let Some(binary) = chromium() else {
        println!(
            "skipped: chromium not found (install Debian's `chromium` package to run this test)"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // ANIMELENS_UI_MODEL swaps in a real checkpoint (e.g. models/demo/holoen) for the screenshot.
    let model = std::env::var_os("ANIMELENS_UI_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tiny_model(tmp.path()));
    let gallery = small_gallery(&tmp.path().join("gallery"), 8, 4);
    let data = tmp.path().join("data");
    let server = Server::start_on(&data, &model, &gallery, None);
    let mut browser = Browser::launch(&binary, &tmp.path().join("profile"));
    browser.call(
        "Page.navigate",
        json!({"url": format!("http://{}/", server.addr)}),
    );
    browser.wait_for(
        "the cold-start feed",
        "document.querySelectorAll('#feed .card').length >= 6",
    );
    let cold_feed = browser.card_ids("feed");
    assert_eq!(
        browser.eval(
            "[...document.querySelectorAll('#feed .card .score')].map(s => s.textContent).join('')"
        ),
        json!(""),
        "feed cards show no similarity (their scores rank, a cold-start one is 0)"
    );

    // Pick an image: verdict, lookalike characters and lookalike images appear.
    let upload = web_support::sample_gallery().join("val/gura");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&upload)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let input = browser.call(
        "Runtime.evaluate",
        json!({"expression": "document.getElementById('file-input')"}),
    );
    browser.call(
        "DOM.setFileInputFiles",
        json!({"files": [files[0].to_str().unwrap()], "objectId": input["result"]["objectId"]}),
    );
    browser.wait_for(
        "lookalike results",
        "document.querySelectorAll('#results .card').length >= 6",
    );
    let verdict = browser.wait_for(
        "the verdict",
        "document.getElementById('verdict').innerText",
    );
    assert!(!verdict.as_str().unwrap().contains("Looking"), "{verdict}");
    browser.wait_for(
        "lookalike characters",
        "document.querySelectorAll('#characters li').length > 0",
    );
    assert_eq!(
        browser.eval("document.getElementById('error').hidden"),
        json!(true)
    );

    // Click a lookalike character: the verdict names the character being browsed.
    let other = browser.eval("document.querySelector('#characters li button').textContent");
    browser.eval("document.querySelector('#characters li button').click()");
    browser.wait_for(
        "the verdict to follow the clicked character",
        &format!("document.querySelector('#verdict .name') && document.querySelector('#verdict .name').textContent === {other}"),
    );

    // Click a result: the grid now shows that item's neighbours.
    let first = browser.card_ids("results")[0];
    browser.eval("document.querySelector('#results .card img').click()");
    browser.wait_for(
        "a search from the clicked item",
        &format!("document.getElementById('results').dataset.query === 'item:{first}' && document.querySelectorAll('#results .card').length > 0"),
    );
    assert!(!browser.card_ids("results").contains(&first));

    // Like two results: the feed changes.
    browser.eval("document.querySelectorAll('#results .card .like')[0].click()");
    browser.wait_for(
        "the feed to change after a like",
        &format!("JSON.stringify([...document.querySelectorAll('#feed .card')].map(c => Number(c.dataset.id))) !== '{}'", serde_json::to_string(&cold_feed).unwrap()),
    );
    browser.eval("document.querySelectorAll('#results .card .like')[1].click()");
    browser.wait_for(
        "the like button state",
        "document.querySelectorAll('#results .card .like.on').length === 2",
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_ne!(browser.card_ids("feed"), cold_feed);

    // Screenshot: to ANIMELENS_UI_SCREENSHOT when set (docs/screenshots/ui.png was made so).
    let shot = browser.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = decode_base64(shot["data"].as_str().unwrap());
    assert_eq!(&png[1..4], b"PNG");
    let out = std::env::var_os("ANIMELENS_UI_SCREENSHOT")
        .map_or_else(|| tmp.path().join("ui.png"), PathBuf::from);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&out, png).unwrap();

    // Upload a picture of the gallery itself: the copyright review finds it, and the panel shows
    // the catalogued original beside the upload.
    let mut catalogued: Vec<PathBuf> = std::fs::read_dir(gallery.join("train"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    catalogued.sort();
    let copy = &catalogued[0];
    let input = browser.call(
        "Runtime.evaluate",
        json!({"expression": "document.getElementById('file-input')"}),
    );
    browser.call(
        "DOM.setFileInputFiles",
        json!({"files": [copy.to_str().unwrap()], "objectId": input["result"]["objectId"]}),
    );
    browser.wait_for(
        "the possible-copy panel",
        "!document.getElementById('copy-panel').hidden",
    );
    let shown = browser.eval(
        "({item: Number(document.getElementById('copy-panel').dataset.item), \
          source: document.getElementById('copy-source').textContent, \
          original: document.getElementById('copy-original').src, \
          detail: document.getElementById('copy-detail').textContent, \
          loaded: document.getElementById('copy-original').complete && document.getElementById('copy-original').naturalWidth > 0})",
    );
    let file_name = copy.file_name().unwrap().to_str().unwrap();
    assert!(
        shown["source"].as_str().unwrap().ends_with(file_name),
        "{shown}"
    );
    assert!(
        shown["original"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/api/v1/items/{}/thumbnail", shown["item"])),
        "{shown}"
    );
    assert!(
        shown["detail"].as_str().unwrap().contains("exact"),
        "{shown}"
    );
    browser.wait_for(
        "the original's thumbnail",
        "document.getElementById('copy-original').naturalWidth > 0",
    );
}
