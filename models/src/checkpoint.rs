//! Checkpoints: `NAME.safetensors` (weights, torchvision names) + `NAME.json` (the model card).
//!
//! The card records the architecture, input size and preprocessing, label lists per head, the
//! training configuration, final metrics and a fingerprint (SHA-256 of the weights file) that
//! catalogues remember. Files are written to a temporary name and renamed, so a killed process
//! never leaves a half-written checkpoint behind.

use crate::architecture::{self, Architecture, UnknownArchitecture, GOOGLENET};
use crate::fusion::{BlockFusion, Fusion, FusionError};
use crate::generalisation::ScoreCalibration;
use crate::head::HeadKind;
use crate::network::{HeadSpec, Network};
use crate::palette::PaletteFusion;
use crate::preprocess::Preprocessing;
use crate::quantise::Int8Card;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The architecture `animelens train` builds, as model cards name it.
pub const ARCHITECTURE: &str = GOOGLENET.name;

/// One head of the model card: its label level and class names in index order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadCard {
    /// Label level, e.g. `character`.
    pub level: String,
    /// Class names; logit `i` is `labels[i]`.
    pub labels: Vec<String>,
}

/// Everything needed to use a checkpoint besides its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Name of the architecture table the weights belong to (`architecture::by_name`).
    pub architecture: String,
    /// How images become input tensors.
    pub preprocessing: Preprocessing,
    /// Heads, primary level first.
    pub heads: Vec<HeadCard>,
    /// Kind of every head (`linear` when absent: cards written before cosine heads).
    #[serde(default)]
    pub head: HeadKind,
    /// Dropout rate before the heads during training.
    pub dropout: f32,
    /// Epochs trained so far (for resuming).
    pub epochs_trained: usize,
    /// Training configuration, as given.
    pub training: serde_json::Value,
    /// Final metrics (e.g. `val_top1`).
    pub metrics: BTreeMap<String, f64>,
    /// SHA-256 (hex) of the weights file; filled in by [`save`].
    pub fingerprint: String,
    /// Map from embedding cosine to P(same character), fitted by `animelens eval --calibrate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similarity: Option<ScoreCalibration>,
    /// Whether the character vector fuses the palette descriptor with the embedding
    /// (`animelens eval --palette-weight W --calibrate` records it; see [`crate::palette`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub palette: Option<PaletteFusion>,
    /// Whether the character vector fuses a mid-level block's pooled activation
    /// (`animelens eval --block-weight W --calibrate` records it; see [`crate::fusion`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<BlockFusion>,
    /// Whether the network runs in int8, with the calibrated input scales
    /// (`animelens export --dtype int8 --calibrate DIR` writes it; see [`crate::quantise`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<Int8Card>,
}

impl ModelCard {
    /// The card of a freshly built GoogLeNet with `heads` (linear, no dropout, nothing trained
    /// or measured yet): what tests and tools start from before [`build`].
    pub fn untrained(preprocessing: Preprocessing, heads: Vec<HeadCard>) -> Self {
        Self {
            architecture: ARCHITECTURE.into(),
            preprocessing,
            heads,
            head: HeadKind::default(),
            dropout: 0.0,
            epochs_trained: 0,
            training: serde_json::Value::Null,
            metrics: BTreeMap::new(),
            fingerprint: String::new(),
            similarity: None,
            palette: None,
            block: None,
            int8: None,
        }
    }

    /// How the character vector fuses the embedding with the palette and a block, for the
    /// card's `architecture` (checked when the card is read, see [`read_card`]).
    pub fn fusion(&self, architecture: &Architecture) -> Result<Fusion, FusionError> {
        Fusion::new(self.palette, self.block.clone(), architecture)
    }

    /// The characters the model was trained without (`train --hold-out`), from its training
    /// configuration; empty for cards that record none.
    pub fn held_out(&self) -> Vec<String> {
        self.training
            .get("held_out")
            .and_then(|h| serde_json::from_value(h.clone()).ok())
            .unwrap_or_default()
    }

    /// Head specs for building the network.
    pub fn head_specs(&self) -> Vec<HeadSpec> {
        self.heads
            .iter()
            .map(|h| HeadSpec {
                level: h.level.clone(),
                classes: h.labels.len(),
            })
            .collect()
    }
}

/// Why a checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A checkpoint file could not be read.
    #[error("cannot read {path}: {source}. Check the path: a checkpoint is NAME.safetensors with NAME.json beside it, as `animelens train` writes them")]
    Read {
        /// File involved.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A checkpoint file could not be written.
    #[error("cannot write {path}: {source}. Check free disk space and the folder's permissions")]
    Write {
        /// File involved.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The card is not valid JSON of the expected shape.
    #[error("model card {path} is invalid: {message}. Use the .json written next to the .safetensors by `animelens train`")]
    Card {
        /// Card path.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// Weights and card disagree, or tensors are missing.
    #[error("weights {path} do not match their model card: {message}. Re-export the checkpoint or retrain")]
    Mismatch {
        /// Weights path.
        path: PathBuf,
        /// Details.
        message: String,
    },
    /// The card names an architecture this build does not have.
    #[error("{0}. Use a checkpoint written by this version of AnimeLens, or retrain")]
    Architecture(#[from] UnknownArchitecture),
    /// candle failed.
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The copy descriptor's whitening beside the checkpoint is unusable.
    #[error("{0}. Write it again with `animelens learn-copy-whitening`, or delete it")]
    CopyWhitening(#[from] crate::whitening::WhiteningError),
    /// A fused part's whitening, which the card asks for, is missing or unusable.
    #[error("{0}")]
    PartWhitening(crate::whitening::WhiteningError),
}

fn read_error(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// `stem.safetensors` and `stem.json` for a path given with or without either extension.
pub fn checkpoint_paths(path: &Path) -> (PathBuf, PathBuf) {
    let stem = match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") | Some("json") => path.with_extension(""),
        _ => path.to_path_buf(),
    };
    let with = |ext: &str| PathBuf::from(format!("{}.{ext}", stem.display()));
    (with("safetensors"), with("json"))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    crate::atomic_file::write_atomically(path, bytes).map_err(write_error(path))
}

/// SHA-256 (hex, first 16 bytes) of a weights file's bytes.
pub fn fingerprint(bytes: &[u8]) -> String {
    Sha256::digest(bytes)[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Saves all variables of `varmap` (as `dtype`: F32, F16 or BF16) and the card; returns the
/// card with its fingerprint filled in.
pub fn save(
    varmap: &VarMap,
    path: &Path,
    card: &ModelCard,
    dtype: DType,
) -> Result<ModelCard, CheckpointError> {
    let tensors: HashMap<String, Tensor> = {
        let data = varmap.data().lock().expect("varmap lock poisoned");
        data.iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().to_dtype(dtype)?)))
            .collect::<candle_core::Result<_>>()?
    };
    write_checkpoint(&tensors, path, card)
}

/// Saves `varmap` as an int8 checkpoint for `card` (which must carry the calibration,
/// [`ModelCard::int8`]): every convolution kernel as 7-bit codes stored in u8 with an offset of
/// 128 (`NAME.int8`) and one f32 scale per output channel (`NAME.int8_scale`), the rest
/// (BatchNorm, heads) as f16. [`load`] turns the codes back into f32 weights; the int8
/// kernels re-derive the same codes from them after BatchNorm folding, because per-channel
/// symmetric codes do not change when a row is scaled.
pub fn save_int8(
    varmap: &VarMap,
    path: &Path,
    card: &ModelCard,
) -> Result<ModelCard, CheckpointError> {
    let Some(int8) = &card.int8 else {
        return Err(CheckpointError::Card {
            path: path.to_path_buf(),
            message: "an int8 checkpoint needs a calibration in its card".into(),
        });
    };
    // The activation codes go into the file too (scale 0: f32), so that the fingerprint, which
    // catalogues compare, changes with the calibration.
    let codes: Vec<f32> = int8
        .inputs
        .iter()
        .flat_map(|c| c.map_or([0.0, 0.0], |c| [c.scale, f32::from(c.zero_point)]))
        .collect();
    let count = int8.inputs.len();
    let mut tensors = HashMap::from([(
        INT8_INPUTS.to_string(),
        Tensor::from_vec(codes, (count, 2), &Device::Cpu)?,
    )]);
    {
        let data = varmap.data().lock().expect("varmap lock poisoned");
        for (name, var) in data.iter() {
            let t = var.as_tensor();
            if t.rank() == 4 {
                let (codes, scales) = weight_codes(t)?;
                tensors.insert(format!("{name}{INT8_CODES}"), codes);
                tensors.insert(format!("{name}{INT8_SCALES}"), scales);
            } else {
                tensors.insert(name.clone(), t.to_dtype(DType::F16)?);
            }
        }
    }
    write_checkpoint(&tensors, path, card)
}

/// The int8 card's input codes (scale, zero point per convolution), stored in the weights file
/// as well.
const INT8_INPUTS: &str = "int8.inputs";
/// Suffix of a convolution kernel's int8 codes in an int8 checkpoint.
const INT8_CODES: &str = ".int8";
/// Suffix of its per-output-channel scales.
const INT8_SCALES: &str = ".int8_scale";
/// The offset that stores an i8 code in a u8 (candle has no i8 tensors).
const CODE_OFFSET: f32 = 128.0;

/// A kernel `(O, ...)` as u8-stored 7-bit codes (same shape) and `(O)` f32 scales.
fn weight_codes(t: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let shape = t.shape().clone();
    let rows = t.dim(0)?;
    let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let k = values.len() / rows.max(1);
    let mut codes = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(rows);
    for row in values.chunks_exact(k) {
        let scale = crate::ops::weight_scale(row);
        codes.extend(
            row.iter()
                .map(|&w| (f32::from(crate::ops::weight_code(w, scale)) + CODE_OFFSET) as u8),
        );
        scales.push(scale);
    }
    Ok((
        Tensor::from_vec(codes, shape, &Device::Cpu)?,
        Tensor::from_vec(scales, rows, &Device::Cpu)?,
    ))
}

/// The f32 kernel an int8 checkpoint's codes and scales stand for.
fn dequantised(codes: &Tensor, scales: &Tensor) -> candle_core::Result<Tensor> {
    let rows = codes.dim(0)?;
    let mut shape = vec![rows];
    shape.extend(std::iter::repeat_n(1, codes.rank() - 1));
    let centred = (codes.to_dtype(DType::F32)? - f64::from(CODE_OFFSET))?;
    centred.broadcast_mul(&scales.to_dtype(DType::F32)?.reshape(shape)?)
}

/// Serialises `tensors`, fills in `card`'s fingerprint and writes both files.
fn write_checkpoint(
    tensors: &HashMap<String, Tensor>,
    path: &Path,
    card: &ModelCard,
) -> Result<ModelCard, CheckpointError> {
    let (weights_path, card_path) = checkpoint_paths(path);
    let bytes = safetensors::serialize(tensors, None).map_err(|e| CheckpointError::Mismatch {
        path: weights_path.clone(),
        message: e.to_string(),
    })?;
    let mut card = card.clone();
    card.fingerprint = fingerprint(&bytes);
    write_atomically(&weights_path, &bytes)?;
    let json = serde_json::to_vec_pretty(&card).expect("card serialises");
    write_atomically(&card_path, &json)?;
    Ok(card)
}

/// Rewrites the model card of the checkpoint at `path` (the weights, and so the fingerprint,
/// stay as they are), e.g. to record a score calibration fitted after training.
pub fn write_card(path: &Path, card: &ModelCard) -> Result<(), CheckpointError> {
    let (_, card_path) = checkpoint_paths(path);
    let json = serde_json::to_vec_pretty(card).expect("card serialises");
    write_atomically(&card_path, &json)
}

/// Reads a model card.
pub fn read_card(path: &Path) -> Result<ModelCard, CheckpointError> {
    let (_, card_path) = checkpoint_paths(path);
    let text = std::fs::read(&card_path).map_err(read_error(&card_path))?;
    let invalid = |message: String| CheckpointError::Card {
        path: card_path.clone(),
        message,
    };
    let card: ModelCard = serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
    // An unknown architecture is reported when the network is built.
    if let Ok(architecture) = architecture::by_name(&card.architecture) {
        card.fusion(architecture)
            .map_err(|e| invalid(e.to_string()))?;
    }
    Ok(card)
}

/// A network with its weights and card, ready for training or inference.
pub struct LoadedModel {
    /// All variables (f32), named like torchvision.
    pub varmap: VarMap,
    /// The network reading those variables.
    pub net: Network,
    /// The model card.
    pub card: ModelCard,
}

impl LoadedModel {
    /// The network as served: BatchNorm folded, and quantised if the card says int8.
    pub fn serving(&self) -> candle_core::Result<crate::folded::FoldedNetwork> {
        crate::quantise::serving_network(&self.net, self.card.int8.as_ref())
    }
}

/// Builds a fresh network for `card` with randomly initialised variables.
pub fn build(card: &ModelCard) -> Result<LoadedModel, CheckpointError> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let architecture = architecture::by_name(&card.architecture)?;
    let net = Network::new(
        architecture,
        &card.head_specs(),
        card.head,
        card.dropout,
        vb,
    )?;
    Ok(LoadedModel {
        varmap,
        net,
        card: card.clone(),
    })
}

/// Loads a checkpoint written by [`save`] (weights converted to f32), checking the fingerprint.
pub fn load(path: &Path) -> Result<LoadedModel, CheckpointError> {
    let (weights_path, _) = checkpoint_paths(path);
    let card = read_card(path)?;
    let bytes = std::fs::read(&weights_path).map_err(read_error(&weights_path))?;
    let actual = fingerprint(&bytes);
    if !card.fingerprint.is_empty() && actual != card.fingerprint {
        return Err(CheckpointError::Mismatch {
            path: weights_path,
            message: format!("fingerprint {actual}, card says {}", card.fingerprint),
        });
    }
    let model = build(&card)?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
    let mut varmap = model.varmap.clone();
    let names: Vec<String> = varmap
        .data()
        .lock()
        .expect("varmap lock poisoned")
        .keys()
        .cloned()
        .collect();
    for name in names {
        let codes = tensors.get(&format!("{name}{INT8_CODES}"));
        let scales = tensors.get(&format!("{name}{INT8_SCALES}"));
        let t = match (tensors.get(&name), codes, scales) {
            (Some(t), _, _) => t.to_dtype(DType::F32)?,
            (None, Some(codes), Some(scales)) => dequantised(codes, scales)?,
            _ => {
                return Err(CheckpointError::Mismatch {
                    path: weights_path.clone(),
                    message: format!("tensor {name} is missing"),
                })
            }
        };
        varmap
            .set_one(&name, t)
            .map_err(|e| CheckpointError::Mismatch {
                path: weights_path.clone(),
                message: format!("{name}: {e}"),
            })?;
    }
    Ok(LoadedModel { varmap, ..model })
}

/// What [`load_matching`] did with a foreign weights file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct InitReport {
    /// Variables loaded from the file.
    pub loaded: usize,
    /// Variables whose shape differs (e.g. heads with another class count): left initialised.
    pub reinitialised: Vec<String>,
    /// Variables absent from the file: left initialised.
    pub missing: Vec<String>,
    /// Tensors in the file the network does not have (aux heads, `num_batches_tracked`).
    pub ignored: usize,
}

/// Loads every variable whose name and shape match from a safetensors file (a converted
/// torchvision GoogLeNet checkpoint works as-is); others keep their initial values.
pub fn load_matching(varmap: &mut VarMap, file: &Path) -> Result<InitReport, CheckpointError> {
    let tensors = candle_core::safetensors::load(file, &Device::Cpu).map_err(|e| {
        CheckpointError::Mismatch {
            path: file.into(),
            message: format!("cannot read as safetensors: {e}"),
        }
    })?;
    let mut report = InitReport::default();
    let vars: Vec<(String, Vec<usize>)> = {
        let data = varmap.data().lock().expect("varmap lock poisoned");
        data.iter()
            .map(|(k, v)| (k.clone(), v.dims().to_vec()))
            .collect()
    };
    for (name, dims) in &vars {
        match tensors.get(name) {
            Some(t) if t.dims() == dims.as_slice() => {
                varmap.set_one(name, t.to_dtype(DType::F32)?)?;
                report.loaded += 1;
            }
            Some(_) => report.reinitialised.push(name.clone()),
            None => report.missing.push(name.clone()),
        }
    }
    report.ignored = tensors
        .keys()
        .filter(|k| !vars.iter().any(|(n, _)| n == *k))
        .count();
    report.reinitialised.sort();
    report.missing.sort();
    if report.loaded == 0 {
        return Err(CheckpointError::Mismatch {
            path: file.into(),
            message: "no tensor matches a parameter name of the network (expected torchvision names such as conv1.conv.weight)".into(),
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(classes: usize) -> ModelCard {
        let heads = vec![HeadCard {
            level: "character".into(),
            labels: (0..classes).map(|i| format!("c{i}")).collect(),
        }];
        ModelCard {
            dropout: 0.5,
            ..ModelCard::untrained(Preprocessing::new(64), heads)
        }
    }

    fn all_tensors(vm: &VarMap) -> BTreeMap<String, Vec<f32>> {
        let data = vm.data().lock().unwrap();
        data.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn f32_checkpoints_round_trip_bit_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let model = build(&card(5)).unwrap();
        let saved = save(
            &model.varmap,
            &dir.path().join("m"),
            &model.card,
            DType::F32,
        )
        .unwrap();
        assert_eq!(saved.fingerprint.len(), 32);
        let loaded = load(&dir.path().join("m.safetensors")).unwrap();
        assert_eq!(loaded.card, saved);
        assert_eq!(all_tensors(&loaded.varmap), all_tensors(&model.varmap));
    }

    #[test]
    fn tampered_weights_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let model = build(&card(3)).unwrap();
        save(
            &model.varmap,
            &dir.path().join("m"),
            &model.card,
            DType::F16,
        )
        .unwrap();
        let other = build(&card(3)).unwrap();
        let bytes = safetensors::serialize(
            other
                .varmap
                .data()
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .collect::<HashMap<_, _>>(),
            None,
        )
        .unwrap();
        std::fs::write(dir.path().join("m.safetensors"), bytes).unwrap();
        let err = load(&dir.path().join("m")).err().unwrap().to_string();
        assert!(err.contains("fingerprint"), "{err}");
    }

    #[test]
    fn torchvision_named_file_loads_and_mismatched_heads_are_reinitialised() {
        let dir = tempfile::tempdir().unwrap();
        // A "torchvision" file: 1000-class fc, plus tensors we do not have.
        let tv = build(&card(1000)).unwrap();
        let mut tensors: HashMap<String, Tensor> = tv
            .varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        tensors.insert(
            "conv1.bn.num_batches_tracked".into(),
            Tensor::new(&[0i64], &Device::Cpu).unwrap(),
        );
        tensors.insert(
            "aux1.fc2.weight".into(),
            Tensor::zeros((1000, 1024), DType::F32, &Device::Cpu).unwrap(),
        );
        let file = dir.path().join("googlenet-torchvision.safetensors");
        candle_core::safetensors::save(&tensors, &file).unwrap();
        let mut ours = build(&card(18)).unwrap();
        let report = load_matching(&mut ours.varmap, &file).unwrap();
        assert_eq!(report.reinitialised, vec!["fc.bias", "fc.weight"]);
        assert!(report.missing.is_empty());
        assert_eq!(report.ignored, 2);
        let a = all_tensors(&ours.varmap);
        let b = all_tensors(&tv.varmap);
        assert_eq!(
            a["inception4c.branch3.1.conv.weight"],
            b["inception4c.branch3.1.conv.weight"]
        );
        assert_eq!(a["conv1.bn.running_var"], b["conv1.bn.running_var"]);
    }
}
