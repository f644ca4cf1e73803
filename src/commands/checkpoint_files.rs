//! The files that sit beside a checkpoint (the whitenings learned for it) and travel with it when
//! a command writes the checkpoint anew (`export`, in any precision).

use anyhow::{Context, Result};
use std::path::Path;

/// Copies the whitenings learned for checkpoint `from` (copy descriptor, fused block and
/// palette) to sit beside `to`, so that the exported checkpoint describes pictures the same way.
pub fn copy_whitenings(from: &Path, to: &Path) -> Result<()> {
    use animelens_models::whitening::Whitening;
    let kinds = [
        animelens_models::copies::COPY_WHITENING,
        animelens_models::fusion::BLOCK_WHITENING,
        animelens_models::fusion::PALETTE_WHITENING,
    ];
    for kind in kinds {
        let (source, target) = (
            Whitening::path_for(from, kind),
            Whitening::path_for(to, kind),
        );
        if source.exists() && source != target {
            std::fs::copy(&source, &target)
                .with_context(|| format!("copying the {kind} whitening beside {}", to.display()))?;
        }
    }
    Ok(())
}
