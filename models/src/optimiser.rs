//! AdamW over the trainable parameters of a [`VarMap`]: everything except the BatchNorm running
//! statistics and the parameters of frozen layers.

use crate::googlenet::LAYER_NAMES;
use crate::layers::is_buffer;
use candle_core::{Result, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};

/// The variables AdamW updates when the first `frozen` layers are frozen, sorted by name.
pub fn trainable_vars(varmap: &VarMap, frozen: usize) -> Vec<(String, Var)> {
    let frozen_prefixes: Vec<String> = LAYER_NAMES[..frozen]
        .iter()
        .map(|l| format!("{l}."))
        .collect();
    let data = varmap.data().lock().expect("varmap lock poisoned");
    let mut vars: Vec<(String, Var)> = data
        .iter()
        .filter(|(name, _)| !is_buffer(name))
        .filter(|(name, _)| !frozen_prefixes.iter().any(|p| name.starts_with(p.as_str())))
        .map(|(name, var)| (name.clone(), var.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// AdamW with decoupled weight decay (the guide's optimiser, lr 1e-3).
pub fn adamw(varmap: &VarMap, frozen: usize, lr: f64, weight_decay: f64) -> Result<AdamW> {
    let vars = trainable_vars(varmap, frozen)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    AdamW::new(
        vars,
        ParamsAdamW {
            lr,
            weight_decay,
            ..Default::default()
        },
    )
}
