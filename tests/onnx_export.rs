//! ONNX export end to end: the real binary writes a model as an ONNX file with a parity sample,
//! and ONNX Runtime (the PyPI wheel, in the virtual environment `.ci/run` makes) runs the file
//! and must reproduce AnimeLens's own outputs within 1e-4, after `onnx.checker` accepted it.
//! Without a Python that has onnx and onnxruntime the test reports itself skipped (the graph's
//! structure is still checked by `animelens_models::onnx`'s unit tests).

mod web_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use web_support::{ok, run, tiny_model};

/// A Python with onnx, onnxruntime and numpy: `ANIMELENS_ONNX_PYTHON`, else the venv `.ci/run`
/// makes, else the system's `python3` if it has them.
fn onnx_python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("ANIMELENS_ONNX_PYTHON").map(PathBuf::from),
        std::env::var_os("HOME")
            .map(|h| Path::new(&h).join(".cache/animelens-onnx-venv/bin/python")),
        Some(PathBuf::from("python3")),
    ];
    candidates.into_iter().flatten().find(|python| {
        Command::new(python)
            .args(["-c", "import onnx, onnxruntime, numpy"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn onnx_runtime_reproduces_the_engine_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let (file, sample) = (dir.path().join("tiny.onnx"), dir.path().join("sample"));
    let printed = ok(&[
        "export",
        "--model",
        model.to_str().unwrap(),
        "--format",
        "onnx",
        "--out",
        file.to_str().unwrap(),
        "--parity-sample",
        sample.to_str().unwrap(),
    ]);
    assert!(printed.contains("opset 17"), "{printed}");
    assert!(sample.join("size-64/images.npy").is_file());
    assert!(sample.join("size-96/logits_character.npy").is_file());

    let Some(python) = onnx_python() else {
        println!("skipped: no Python with onnx and onnxruntime (`.ci/run` installs them)");
        return;
    };
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/benches/reference/onnx_parity.py");
    let out = Command::new(python)
        .arg(script)
        .arg(&file)
        .arg(&sample)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("parity: ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Four comparisons (two sizes × embedding and logits), none skipped.
    assert_eq!(stdout.matches("\"passed\": true").count(), 4, "{stdout}");
}

#[test]
fn onnx_export_refuses_half_precision_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = run(&[
        "export",
        "--model",
        model.to_str().unwrap(),
        "--format",
        "onnx",
        "--dtype",
        "f16",
        "--out",
        dir.path().join("x.onnx").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ONNX files are written in f32"), "{err}");
    assert!(!dir.path().join("x.onnx").exists());
}
