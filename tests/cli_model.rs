//! End-to-end: the `animelens` binary trains on the committed sample, evaluates, classifies and
//! embeds, and answers bad input with clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn animelens(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_animelens"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/sample/holoen")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `command --model MODEL --data DATA EXTRA...`.
fn on_model_and_data(command: &str, model: &Path, data: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        command,
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ];
    args.extend(extra);
    animelens(&args)
}

/// Trains a 64 px model for `epochs` epochs of two batches of 8 images.
fn train_tiny(data: &Path, run: &Path, epochs: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--input-size",
        "64",
        "--epochs",
        epochs,
        "--max-batches",
        "2",
        "--batch-size",
        "8",
    ];
    args.extend_from_slice(extra);
    animelens(&args)
}

#[test]
fn train_eval_classify_embed_on_the_sample() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let data = sample();
    let o = train_tiny(&data, &run, "2", &[]);
    assert!(o.status.success(), "{}", text(&o));
    for f in [
        "best.safetensors",
        "best.json",
        "last.safetensors",
        "metrics.jsonl",
        "curves.png",
        "accuracy.png",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    // Resuming continues the epoch count from the checkpoint.
    let last = run.join("last");
    let o = train_tiny(&data, &run, "3", &["--resume", last.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().last().unwrap().split(',').next().unwrap(),
        "{\"epoch\":3"
    );
    // An f16 export loads and is half the size.
    let half = dir.path().join("half");
    let o = animelens(&[
        "export",
        "--model",
        last.to_str().unwrap(),
        "--out",
        half.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as f64;
    let ratio =
        size(&half.with_extension("safetensors")) / size(&last.with_extension("safetensors"));
    assert!((0.45..0.55).contains(&ratio), "f16 size ratio {ratio}");

    let model = run.join("best");
    let eval_dir = dir.path().join("eval");
    let o = animelens(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        eval_dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(eval_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["images"], 72);
    assert_eq!(report["heads"][0]["classes"].as_array().unwrap().len(), 18);
    assert!(report["retrieval"]["recall_at_1"].as_f64().unwrap() >= 0.0);
    assert!(eval_dir.join("confusion-character.png").is_file());

    let image = data
        .join("val/ame")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let o = animelens(&[
        "classify",
        "--model",
        model.to_str().unwrap(),
        "--json",
        image.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(line["heads"][0]["top"].as_array().unwrap().len(), 3);

    let npy = dir.path().join("v.npy");
    // The character vectors of `images`, written to `npy`.
    let embed = |images: &[&Path]| {
        let mut args = vec![
            "embed",
            "--model",
            model.to_str().unwrap(),
            "--out",
            npy.to_str().unwrap(),
        ];
        args.extend(images.iter().map(|p| p.to_str().unwrap()));
        animelens(&args)
    };
    let o = embed(&[&image, &image]);
    assert!(o.status.success(), "{}", text(&o));
    let bytes = std::fs::read(&npy).unwrap();
    assert!(bytes.starts_with(b"\x93NUMPY"));
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert!(String::from_utf8_lossy(&bytes[10..10 + header_len]).contains("'shape': (2, 1024)"));
    assert_eq!(bytes.len(), 10 + header_len + 2 * 1024 * 4);

    // The unseen-character protocols with the palette and inception4b fused in, recorded in the
    // card by --calibrate: the model's character vectors then carry inception4b's 512 pooled
    // channels and the 144 palette bins.
    let unseen_dir = dir.path().join("unseen");
    let o = animelens(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--unseen",
        "--unseen-characters",
        "gura,kronii",
        "--shots",
        "1,3",
        "--episodes",
        "2",
        "--palette-weight",
        "0.5",
        "--block-weight",
        "0.2",
        "--calibrate",
        "--out",
        unseen_dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(unseen_dir.join("report.json")).unwrap()).unwrap();
    let shots = report["generalisation"]["few_shot"].as_array().unwrap();
    assert_eq!(shots.len(), 2);
    assert!(unseen_dir.join("cosine-histograms.png").is_file());
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.with_extension("json")).unwrap()).unwrap();
    assert_eq!(card["palette"]["weight"], 0.5);
    assert_eq!(card["block"]["block"], "inception4b");
    assert!((card["block"]["weight"].as_f64().unwrap() - 0.2).abs() < 1e-6);
    let o = embed(&[&image]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("dimension 1680"), "{}", text(&o));
    let o = on_model_and_data("eval", &model, &data, &["--palette-weight", "1.5"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("between 0 and 1"), "{}", text(&o));
    for (weights, complaint) in [
        (["--block-weight", "0.6"], "sum to at most 1"),
        (
            ["--block", "inception9z"],
            "no Inception block named \"inception9z\"",
        ),
    ] {
        let mut args = weights.to_vec();
        if weights[0] == "--block" {
            args.extend(["--block-weight", "0.1"]);
        }
        let o = on_model_and_data("eval", &model, &data, &args);
        assert!(!o.status.success());
        assert!(text(&o).contains(complaint), "{}", text(&o));
    }

    // Whitening the fused parts, learned from the seen characters' training pictures: the card
    // marks both parts, drops the calibration fitted on the raw vectors, and the vectors (same
    // length) change; a missing whitening file is a clear error, not a panic.
    let raw_vector = std::fs::read(&npy).unwrap();
    let o = on_model_and_data(
        "learn-whitening",
        &model,
        &data,
        &["--without", "gura,kronii"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("block-whitening.safetensors"),
        "{}",
        text(&o)
    );
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.with_extension("json")).unwrap()).unwrap();
    assert_eq!(card["block"]["whitened"], true);
    assert_eq!(card["palette"]["whitened"], true);
    assert!(card.get("similarity").is_none_or(|s| s.is_null()), "{card}");
    let o = embed(&[&image]);
    assert!(text(&o).contains("dimension 1680"), "{}", text(&o));
    assert_ne!(std::fs::read(&npy).unwrap(), raw_vector);
    let o = on_model_and_data("learn-whitening", &model, &data, &["--parts", "colour"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("unknown part 'colour'"), "{}", text(&o));
    let palette_whitening = dir.path().join("run/best.palette-whitening.safetensors");
    let moved = dir.path().join("moved.safetensors");
    std::fs::rename(&palette_whitening, &moved).unwrap();
    let o = embed(&[&image]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("learn-whitening") && !t.contains("panicked"),
        "{t}"
    );
    std::fs::rename(&moved, &palette_whitening).unwrap();

    // A corrupt image is reported by name; the command fails without a panic.
    let corrupt = dir.path().join("corrupt.jpg");
    std::fs::write(&corrupt, b"\xff\xd8\xff garbage").unwrap();
    let o = animelens(&[
        "classify",
        "--model",
        model.to_str().unwrap(),
        image.to_str().unwrap(),
        corrupt.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("corrupt.jpg") && t.contains("1 of 2 images could not be classified"),
        "{t}"
    );
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn bad_paths_and_manifests_give_clear_errors() {
    let o = animelens(&["train", "--data", "/no/such/folder", "--out", "/tmp/x"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("/no/such/folder") && text(&o).contains("Check the path"),
        "{}",
        text(&o)
    );

    let o = animelens(&["classify", "--model", "/no/such/model", "x.jpg"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("/no/such/model.json"), "{}", text(&o));
    assert!(text(&o).contains("Check the path"), "{}", text(&o));
    assert!(
        !text(&o).contains("disk space"),
        "a read error is not about disk space: {}",
        text(&o)
    );

    // serve --help names every settings key (the list grows with the settings).
    let help = text(&animelens(&["serve", "--help"]));
    for key in animelens_web::config::KEYS {
        assert!(help.contains(key), "serve --help lacks {key}:\n{help}");
    }

    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/sample/pokemon/manifest.csv");
    let o = animelens(&[
        "train",
        "--data",
        manifest.to_str().unwrap(),
        "--labels",
        "character=species",
        "--out",
        "/tmp/x",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no column 'species'"), "{}", text(&o));
}

/// Zero convolution and head weights of a checkpoint, and how many such weights it has.
fn zeros(checkpoint: &Path) -> (usize, usize) {
    let model = animelens_models::checkpoint::load(checkpoint).unwrap();
    let stats = animelens_models::prune::zero_weights(&model.varmap).unwrap();
    (stats.pruned, stats.prunable)
}

/// `prune` cuts the requested share of weights; fine-tuning with a prune rule keeps them at
/// zero, while fine-tuning without one lets AdamW grow them back.
#[test]
fn pruned_weights_stay_zero_through_fine_tuning() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample();
    let run = dir.path().join("run");
    let o = train_tiny(&data, &run, "1", &[]);
    assert!(o.status.success(), "{}", text(&o));
    let pruned = dir.path().join("pruned");
    let o = animelens(&[
        "prune",
        "--model",
        run.join("best").to_str().unwrap(),
        "--out",
        pruned.to_str().unwrap(),
        "--prune-sparsity",
        "0.3",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let (cut, prunable) = zeros(&pruned);
    let share = cut as f64 / prunable as f64;
    assert!((0.299..0.301).contains(&share), "pruned share {share}");

    let init = pruned.with_extension("safetensors");
    let kept = dir.path().join("kept");
    let o = train_tiny(
        &data,
        &kept,
        "1",
        &[
            "--init",
            init.to_str().unwrap(),
            "--prune-threshold",
            "1e-12",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        zeros(&kept.join("last")).0 >= cut,
        "pruned weights grew back"
    );
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(kept.join("last.json")).unwrap()).unwrap();
    assert!(
        card["metrics"]["sparsity"].as_f64().unwrap() > 0.25,
        "{card}"
    );

    let free = dir.path().join("free");
    let o = train_tiny(&data, &free, "1", &["--init", init.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        zeros(&free.join("last")).0 < cut / 10,
        "without the mask training regrows them"
    );

    let o = animelens(&[
        "prune",
        "--model",
        run.join("best").to_str().unwrap(),
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--prune-threshold 0.01"), "{}", text(&o));
}

#[test]
fn bench_stages_times_every_stage_of_a_batch_1_pass() {
    for precision in ["f32", "int8"] {
        bench_stages_at(precision);
    }
}

fn bench_stages_at(precision: &str) {
    let out = animelens(&[
        "bench",
        "--stages",
        "--batch",
        "1",
        "--sizes",
        "48",
        "--repeats",
        "1",
        "--precision",
        precision,
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let line: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON object for the one size");
    assert_eq!(
        (line["size"].as_u64(), line["batch"].as_u64()),
        (Some(48), Some(1))
    );
    let stages = line["stages"].as_array().expect("stages");
    let names: Vec<&str> = stages.iter().filter_map(|s| s["stage"].as_str()).collect();
    assert_eq!(
        names.len(),
        16,
        "conv1 … inception5b, without the average pool: {names:?}"
    );
    assert_eq!((names[0], names[15]), ("conv1", "inception5b"));
    assert!(stages
        .iter()
        .all(|s| s["ms"].as_f64().is_some_and(|ms| ms > 0.0)));
}

/// `export --dtype int8 --calibrate` writes a quarter-size checkpoint of the shipped model whose
/// answers match the original's, with its own fingerprint; missing calibration is a clear error.
#[test]
fn an_int8_export_answers_like_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/holoen");
    let int8 = dir.path().join("int8");
    let calibration = sample().join("train");
    let export = |extra: &[&str]| {
        let mut args = vec![
            "export",
            "--model",
            source.to_str().unwrap(),
            "--out",
            int8.to_str().unwrap(),
        ];
        args.extend(extra);
        animelens(&args)
    };
    let o = export(&["--dtype", "int8"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--calibrate"), "{}", text(&o));
    let o = export(&["--dtype", "int8", "--calibrate", "/no/such/folder"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no calibration pictures"), "{}", text(&o));
    let o = export(&[
        "--dtype",
        "int8",
        "--calibrate",
        calibration.to_str().unwrap(),
        "--calibration-pictures",
        "40",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("int8: 57 of 57 convolutions"),
        "{}",
        text(&o)
    );
    let size = |p: &Path| {
        std::fs::metadata(p.with_extension("safetensors"))
            .unwrap()
            .len()
    };
    // The shipped model is f16: int8 codes are half of it (a quarter of f32).
    let ratio = size(&int8) as f64 / size(&source) as f64;
    assert!((0.45..0.56).contains(&ratio), "int8 / f16 size {ratio}");
    let card = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p.with_extension("json")).unwrap()).unwrap()
    };
    let (a, b) = (card(&source), card(&int8));
    assert_ne!(a["fingerprint"], b["fingerprint"]);
    assert_eq!(b["int8"]["pictures"], 40);
    assert!(
        int8.with_extension("copy.safetensors").is_file(),
        "whitenings copied"
    );

    let images: Vec<String> = sample()
        .join("val")
        .read_dir()
        .unwrap()
        .filter_map(|d| d.ok()?.path().read_dir().ok()?.next()?.ok())
        .map(|e| e.path().to_string_lossy().into_owned())
        .collect();
    let top = |model: &Path| -> Vec<String> {
        let mut args = vec!["classify", "--model", model.to_str().unwrap(), "--json"];
        args.extend(images.iter().map(String::as_str));
        let o = animelens(&args);
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["heads"][0]["top"][0]["label"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let (want, got) = (top(&source), top(&int8));
    assert_eq!(want.len(), images.len());
    let same = want.iter().zip(&got).filter(|(a, b)| a == b).count();
    assert!(
        same + 1 >= want.len(),
        "int8 named {same} of {} pictures as the source did",
        want.len()
    );
}
