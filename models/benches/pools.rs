//! Micro-benchmark of GoogLeNet's max pools at a 96 px batch of 32: the training op
//! (`max_pool2d`, which also records each window's argmax) and the inference kernel
//! (`max_pool_planes`). Prints milliseconds per call; run with
//! `cargo bench -p animelens-models --bench pools` (threads: `RAYON_NUM_THREADS`).

use animelens_models::ops::{max_pool2d, max_pool_planes, PoolGeometry};
use candle_core::{Device, Result, Tensor};
use std::time::Instant;

const CALLS: u32 = 20;

/// Mean milliseconds per call of `f` over [`CALLS`] calls, after one warm-up call.
fn millis(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let start = Instant::now();
    for _ in 0..CALLS {
        f()?;
    }
    Ok(start.elapsed().as_secs_f64() * 1e3 / f64::from(CALLS))
}

fn main() -> Result<()> {
    let stem = PoolGeometry {
        kernel: 3,
        stride: 2,
        pad: 0,
        ceil: true,
    };
    let same = PoolGeometry {
        kernel: 3,
        stride: 1,
        pad: 1,
        ceil: true,
    };
    let last = PoolGeometry { kernel: 2, ..stem };
    // (geometry, channels, side) at 96 px: the first stem pool, the pool after Inception 3b,
    // the one before Inception 5, the Inception 3b and 4e branch pools; then 4e's at 64 px.
    for (name, g, channels, side) in [
        ("3x3 stride 2", stem, 64, 48),
        ("3x3 stride 2", stem, 480, 12),
        ("2x2 stride 2", last, 832, 6),
        ("3x3 same", same, 256, 12),
        ("3x3 same", same, 528, 6),
        ("3x3 same", same, 528, 4),
    ] {
        let x = Tensor::randn(0f32, 1., (channels, 32, side, side), &Device::Cpu)?;
        let values = x.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; max_pool2d(&x, g)?.elem_count()];
        let training = millis(|| max_pool2d(&x, g).map(drop))?;
        let inference = millis(|| max_pool_planes(g, &values, side, side, &mut out).map(drop))?;
        println!(
            "{name} on ({channels}, 32, {side}, {side}): training {training:.2} ms, inference {inference:.2} ms"
        );
    }
    Ok(())
}
