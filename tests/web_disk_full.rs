//! A full disk through the real binary: writes answer 507 while the catalogue's filesystem is
//! full, health stays quick, and once space is freed writes succeed again without a restart
//! (sled fails every write after its first I/O error until reopened; the catalogue reopens it).
//! Everything acknowledged survives a restart.
//!
//! The catalogue lives on a small tmpfs mounted for the test, which needs root (CI runs as root);
//! elsewhere the test says so and passes without running.

mod web_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use web_support::{sample_image, small_gallery, tiny_model, Server, API_KEY};

/// A tmpfs mounted on a folder; unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Mount(at.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros to `path` until the filesystem refuses more.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while file
        .write_all(&chunk)
        .and_then(|_| file.sync_data())
        .is_ok()
    {}
}

fn add(server: &Server, image: &[u8]) -> web_support::Response {
    server.request(
        "POST",
        "/api/v1/items?character=newcomer",
        &[("content-type", "image/jpeg"), ("x-api-key", API_KEY)],
        image,
    )
}

#[test]
fn writes_recover_after_the_disk_is_freed_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(_disk) = Mount::tmpfs(&tmp.path().join("disk"), "48m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let model = tiny_model(tmp.path());
    let gallery = small_gallery(&tmp.path().join("gallery"), 2, 2);
    let data = tmp.path().join("disk/data");
    let server = Server::start_on(&data, &model, &gallery, None);
    let before = add(&server, &sample_image("ame", 0));
    assert_eq!(before.status, 201, "{}", before.error());
    let first = before.json()["items"][0]["id"].as_u64().unwrap();

    let filler = tmp.path().join("disk/filler");
    fill(&filler);
    // A few writes may still fit in pages sled already has; the disk is full within a few.
    let refused = (1..40)
        .map(|i| add(&server, &sample_image("ame", i)))
        .find(|r| r.status != 201);
    let refused = refused.expect("some write fails once the disk is full");
    assert_eq!(refused.status, 507, "{}", refused.error());
    assert!(
        !refused.error().contains(tmp.path().to_str().unwrap()),
        "{}",
        refused.error()
    );
    let started = Instant::now();
    let (status, _) = server.get_json("/healthz");
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "health blocked on the full disk"
    );

    std::fs::remove_file(&filler).unwrap();
    let after = add(&server, &sample_image("bae", 0));
    assert_eq!(
        after.status,
        201,
        "writes still fail after freeing space: {}",
        after.error()
    );
    let recovered = after.json()["items"][0]["id"].as_u64().unwrap();
    assert_eq!(
        server.get_json(&format!("/api/v1/items/{recovered}")).0,
        200
    );
    let (status, _) = server.get_json(&format!("/api/v1/items/{recovered}/similar?k=3"));
    assert_eq!(status, 200);

    let (exit, _) = server.terminate();
    assert!(exit.success());
    let again = Server::start_on(&data, &model, &gallery, None);
    for id in [first, recovered] {
        assert_eq!(
            again.get_json(&format!("/api/v1/items/{id}")).0,
            200,
            "item {id} lost"
        );
    }
}
