//! A `milvus-lite server` child process on a free loopback port: what the tests and the backend
//! benchmark run the Milvus backend against (milvus-lite speaks Milvus's gRPC protocol; PyPI's
//! `milvus-lite` package, which `.ci/run` installs into a virtual environment). The server dies
//! with this value; `stop` and `start_again` (same port, same data) let a test take it away
//! mid-run and bring it back.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `.ci/run` installs milvus-lite, under `$HOME`.
const CI_VENV: &str = ".cache/animelens-milvus-venv/bin/milvus-lite";

/// How long a starting server may take to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A running `milvus-lite server`.
pub struct MilvusLite {
    exe: PathBuf,
    data_dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl MilvusLite {
    /// The `milvus-lite` executable: `$ANIMELENS_MILVUS_LITE`, the virtual environment `.ci/run`
    /// makes, or one on `PATH`; `None` when there is none.
    pub fn find() -> Option<PathBuf> {
        let named = std::env::var_os("ANIMELENS_MILVUS_LITE").map(PathBuf::from);
        let ci = std::env::var_os("HOME").map(|home| Path::new(&home).join(CI_VENV));
        let on_path = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("milvus-lite"))
                .find(|exe| exe.is_file())
        });
        named.or(ci.filter(|exe| exe.is_file())).or(on_path)
    }

    /// For tests: a server with its data in `data_dir`, or `None` after printing that the test is
    /// skipped when milvus-lite is not installed (`.ci/run` installs it).
    pub fn start_for_test(data_dir: &Path) -> Option<MilvusLite> {
        let Some(exe) = Self::find() else {
            println!(
                "skipped: milvus-lite not found (`.ci/run` installs it into \
                 ~/.cache/animelens-milvus-venv; or set ANIMELENS_MILVUS_LITE)"
            );
            return None;
        };
        Some(Self::start(&exe, data_dir).expect("the milvus-lite server starts"))
    }

    /// Starts `exe` on a free loopback port with its data in `data_dir`, and waits until it
    /// accepts connections.
    pub fn start(exe: &Path, data_dir: &Path) -> std::io::Result<MilvusLite> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut server = MilvusLite {
            exe: exe.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            port,
            child: None,
        };
        server.start_again()?;
        Ok(server)
    }

    /// The URI a client connects to (`milvus_uri`).
    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data after [`MilvusLite::stop`].
    pub fn start_again(&mut self) -> std::io::Result<()> {
        self.stop();
        std::fs::create_dir_all(&self.data_dir)?;
        let child = Command::new(&self.exe)
            .arg("server")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let started = Instant::now();
        while started.elapsed() < READY_WITHIN {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok())
                .flatten()
            {
                return Err(std::io::Error::other(format!(
                    "milvus-lite server exited with {status} before accepting connections"
                )));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.stop();
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("milvus-lite server did not accept connections within {READY_WITHIN:?}"),
        ))
    }
}

impl Drop for MilvusLite {
    fn drop(&mut self) {
        self.stop();
    }
}
