//! Shared pieces of the end-to-end tests: running the binary's subcommands, a tiny random-init
//! model, a small gallery copied from the committed sample, the real `animelens serve` binary on a
//! free loopback port, and a minimal HTTP/1.1 client over `TcpStream` (so the tests need no HTTP
//! client crate).

#![allow(dead_code)] // each test binary uses a different subset

use animelens_models::checkpoint::{self, HeadCard, ModelCard};
use animelens_models::preprocess::Preprocessing;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The API key the test servers are started with.
pub const API_KEY: &str = "test-key";

/// Runs `animelens ARGS` (warnings only in the log).
pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_animelens"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the animelens binary runs")
}

/// Runs `animelens ARGS`, asserting success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "animelens {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The committed sample gallery.
pub fn sample_gallery() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/sample/holoen")
}

/// Saves a random-init GoogLeNet at 64 px with one `character` head over the sample's
/// characters; returns the checkpoint path (without extension).
pub fn tiny_model(dir: &Path) -> PathBuf {
    let mut labels: Vec<String> = std::fs::read_dir(sample_gallery().join("train"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    labels.sort();
    let card = ModelCard::untrained(
        Preprocessing::new(64),
        vec![HeadCard {
            level: "character".into(),
            labels,
        }],
    );
    let model = checkpoint::build(&card).unwrap();
    let path = dir.join("tiny");
    checkpoint::save(&model.varmap, &path, &card, candle_core::DType::F16).unwrap();
    path
}

/// Copies `per_character` training images of the first `characters` sample characters into
/// `dir/train/<character>/`; returns `dir`.
pub fn small_gallery(dir: &Path, characters: usize, per_character: usize) -> PathBuf {
    let src = sample_gallery().join("train");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for from in names.into_iter().take(characters) {
        let to = dir.join("train").join(from.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&from)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files.into_iter().take(per_character) {
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    dir.to_path_buf()
}

/// A `milvus-lite server` on a free loopback port with its data in a new temporary folder, or
/// `None` (the test reports itself skipped) when milvus-lite is not installed.
#[cfg(feature = "milvus")]
pub fn milvus_lite() -> Option<(animelens_index::MilvusLite, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let server = animelens_index::MilvusLite::start_for_test(&dir.path().join("milvus"))?;
    Some((server, dir))
}

/// Service settings (TOML) putting the catalogue on `milvus`.
#[cfg(feature = "milvus")]
pub fn milvus_settings(milvus: &animelens_index::MilvusLite) -> String {
    format!("backend = \"milvus\"\nmilvus_uri = \"{}\"\n", milvus.uri())
}

/// The character folders of a gallery made by [`small_gallery`], sorted.
pub fn gallery_characters(gallery: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(gallery.join("train"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A running `animelens serve`; killed when dropped.
pub struct Server {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    log: mpsc::Receiver<String>,
    /// Log lines read so far.
    pub lines: Vec<String>,
}

impl Server {
    /// Starts the binary with `args` after `serve` and `env` set, and waits for it to listen.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_animelens"));
        cmd.arg("serve")
            .args(["--bind", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .env("ANIMELENS_API_KEY", API_KEY)
            .env("ANIMELENS_HTTP_WORKERS", "2")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start animelens serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[serve] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child,
            addr: String::new(),
            log,
            lines: Vec::new(),
        };
        let line = server.wait_for_log("listening on http://", Duration::from_secs(120));
        server.addr = line
            .split("listening on http://")
            .nth(1)
            .unwrap()
            .trim()
            .to_string();
        server
    }

    /// Starts the binary on data folder `data` with `model` and `gallery` (and a TOML `config`
    /// file when given), the arguments every web test passes.
    pub fn start_on(data: &Path, model: &Path, gallery: &Path, config: Option<&Path>) -> Server {
        let mut args = vec![
            "--data-dir".to_string(),
            data.display().to_string(),
            "--model".to_string(),
            model.display().to_string(),
            "--gallery".to_string(),
            gallery.display().to_string(),
        ];
        if let Some(config) = config {
            args.extend(["--config".to_string(), config.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start(&args, &[])
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a log line containing `needle`; panics with the log on timeout or exit.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        if let Some(l) = self.lines.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        while Instant::now() < deadline {
            match self.log.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    self.lines.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!(
            "no log line containing {needle:?}; log so far:\n{}",
            self.lines.join("\n")
        );
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        let mut lines = std::mem::take(&mut self.lines);
        lines.extend(self.log.try_iter());
        (status, lines)
    }

    /// Sends a request to this server.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        request(&self.addr, method, path, headers, body)
    }

    /// GET `path`, expecting JSON.
    pub fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.request("GET", path, &[], b"");
        (r.status, r.json())
    }

    /// POST a JSON value.
    pub fn post_json(&self, path: &str, value: &serde_json::Value) -> Response {
        self.request(
            "POST",
            path,
            &[("content-type", "application/json")],
            value.to_string().as_bytes(),
        )
    }

    /// POST raw image bytes.
    pub fn post_image(&self, path: &str, content_type: &str, bytes: &[u8]) -> Response {
        self.request("POST", path, &[("content-type", content_type)], bytes)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON (panics with the body otherwise).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `error` message of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Sends one HTTP/1.1 request (`Connection: close`) and reads the whole answer.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer (e.g. 413) and close before reading all of a large body.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

/// A multipart/form-data body: (field name, optional file name, bytes).
pub fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "animelens-test-boundary-7d3f";
    let mut body = Vec::new();
    for (name, filename, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: image/jpeg\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Bytes of image `index` of sample character `name`, counting the sorted `train` images and
/// then the `val` ones (so indices past those [`small_gallery`] copies are not in the gallery).
pub fn sample_image(name: &str, index: usize) -> Vec<u8> {
    let files: Vec<PathBuf> = ["train", "val"]
        .iter()
        .flat_map(|split| {
            let mut files: Vec<PathBuf> =
                std::fs::read_dir(sample_gallery().join(split).join(name))
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
            files.sort();
            files
        })
        .collect();
    std::fs::read(&files[index]).unwrap()
}
