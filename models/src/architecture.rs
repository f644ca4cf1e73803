//! The network as data: an architecture is one table of named stages, in forward order.
//!
//! The training network (`network::Network`), the folded serving network
//! (`folded::FoldedNetwork`) and the ONNX writer (`onnx`) are all built by walking the same
//! table, so a layer, a pool or a channel count is written exactly once, and a new architecture
//! is a new table (plus, for a new kind of layer, one [`Op`] variant that the three walkers
//! learn). Stage and parameter names are torchvision's, so a converted torchvision checkpoint
//! loads by name. The model card's `architecture` field names the table; [`by_name`] finds it.

use crate::ops::{Conv2dGeometry, PoolGeometry};

/// A convolution without bias, then BatchNorm (eps 1e-3) and ReLU: torchvision's `BasicConv2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub pad: usize,
}

impl ConvSpec {
    /// The convolution's window geometry.
    pub fn geometry(&self) -> Conv2dGeometry {
        Conv2dGeometry {
            kernel: self.kernel,
            stride: self.stride,
            pad: self.pad,
        }
    }
}

/// Channel numbers of one Inception block, in torchvision's argument order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InceptionSpec {
    /// Input channels.
    pub c_in: usize,
    /// 1×1 branch.
    pub ch1x1: usize,
    /// 3×3 branch reduction.
    pub ch3x3red: usize,
    /// 3×3 branch output.
    pub ch3x3: usize,
    /// "5×5" branch reduction.
    pub ch5x5red: usize,
    /// "5×5" branch output (a 3×3 convolution in torchvision, kept for weight compatibility).
    pub ch5x5: usize,
    /// Pool branch projection.
    pub pool_proj: usize,
}

/// The 3×3 stride-1 "same" max pool in front of an Inception block's fourth branch.
pub const BRANCH_POOL: PoolGeometry = PoolGeometry {
    kernel: 3,
    stride: 1,
    pad: 1,
    ceil: true,
};

/// One branch of an Inception block: an optional max pool, then convolutions in sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    /// Max pool run on the block's input first (torchvision's `branchK.0`), if any.
    pub pool: Option<PoolGeometry>,
    /// Convolutions in order; the last one's output is the branch's share of the block's.
    pub convs: Vec<ConvSpec>,
}

impl Branch {
    /// torchvision's name of convolution `j` of branch `number` (1-based): the branch's name
    /// when it is a single convolution, else its index within the branch's `Sequential`
    /// (`branch2.0`, `branch2.1`; `branch4.1` after the pool at `branch4.0`).
    pub fn conv_name(&self, number: usize, j: usize) -> String {
        match (self.pool.is_some(), self.convs.len()) {
            (false, 1) => format!("branch{number}"),
            (pooled, _) => format!("branch{number}.{}", j + usize::from(pooled)),
        }
    }

    /// Channels the branch writes.
    pub fn c_out(&self) -> usize {
        self.convs.last().map_or(0, |c| c.c_out)
    }
}

const fn basic(c_in: usize, c_out: usize, kernel: usize) -> ConvSpec {
    ConvSpec {
        c_in,
        c_out,
        kernel,
        stride: 1,
        pad: kernel / 2,
    }
}

impl InceptionSpec {
    /// Output channels: the four branches concatenated.
    pub fn c_out(&self) -> usize {
        self.ch1x1 + self.ch3x3 + self.ch5x5 + self.pool_proj
    }

    /// The four branches, in concatenation order.
    pub fn branches(&self) -> [Branch; 4] {
        let c = self.c_in;
        let plain = |convs: Vec<ConvSpec>| Branch { pool: None, convs };
        [
            plain(vec![basic(c, self.ch1x1, 1)]),
            plain(vec![
                basic(c, self.ch3x3red, 1),
                basic(self.ch3x3red, self.ch3x3, 3),
            ]),
            plain(vec![
                basic(c, self.ch5x5red, 1),
                basic(self.ch5x5red, self.ch5x5, 3),
            ]),
            Branch {
                pool: Some(BRANCH_POOL),
                convs: vec![basic(c, self.pool_proj, 1)],
            },
        ]
    }
}

/// What one stage computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Conv → BatchNorm → ReLU.
    Conv(ConvSpec),
    /// Max pool.
    MaxPool(PoolGeometry),
    /// Inception block: four branches concatenated along channels.
    Inception(InceptionSpec),
    /// Mean over the plane: the pooled feature, which is the embedding (before normalisation)
    /// and what the heads read. The last stage of every architecture.
    GlobalAveragePool,
}

impl Op {
    /// Whether the stage has parameters (and so counts as a layer for `--freeze`).
    pub fn has_parameters(&self) -> bool {
        matches!(self, Self::Conv(_) | Self::Inception(_))
    }
}

/// A named stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    /// torchvision's module name (`conv1`, `maxpool1`, `inception3a`, `avgpool`).
    pub name: &'static str,
    /// What it computes.
    pub op: Op,
}

/// An architecture: its card name, its stages, and the width of its pooled feature.
#[derive(Debug, PartialEq, Eq)]
pub struct Architecture {
    /// Name written in model cards.
    pub name: &'static str,
    /// Stages in forward order, ending with [`Op::GlobalAveragePool`].
    pub stages: &'static [Stage],
    /// Width of the pooled feature: the embedding dimension and the heads' input.
    pub embedding_dim: usize,
}

/// Name of the primary head's parameters (torchvision's `fc`); further heads are `fc_<level>`.
pub const HEAD_PREFIX: &str = "fc";

impl Architecture {
    /// The layers `--freeze N` counts, in forward order: every stage with parameters, then the
    /// heads (named [`HEAD_PREFIX`]).
    pub fn layer_names(&self) -> Vec<&'static str> {
        self.stages
            .iter()
            .filter(|s| s.op.has_parameters())
            .map(|s| s.name)
            .chain([HEAD_PREFIX])
            .collect()
    }

    /// The Inception blocks' names, in forward order.
    pub fn inception_blocks(&self) -> Vec<&'static str> {
        self.stages
            .iter()
            .filter(|s| matches!(s.op, Op::Inception(_)))
            .map(|s| s.name)
            .collect()
    }

    /// The Inception block named `name`: how many blocks have run after it (1 = the first) and
    /// its output channels.
    pub fn inception_block(&self, name: &str) -> Option<(usize, usize)> {
        self.stages
            .iter()
            .filter_map(|s| match s.op {
                Op::Inception(spec) => Some((s.name, spec.c_out())),
                _ => None,
            })
            .enumerate()
            .find(|(_, (n, _))| *n == name)
            .map(|(i, (_, channels))| (i + 1, channels))
    }
}

/// No architecture has the name a model card gives.
#[derive(Debug, thiserror::Error)]
#[error("unknown architecture {0:?}: this build knows {known}", known = KNOWN.iter().map(|a| a.name).collect::<Vec<_>>().join(", "))]
pub struct UnknownArchitecture(pub String);

/// Every architecture this build can train, serve and export.
const KNOWN: [&Architecture; 1] = [&GOOGLENET];

/// The architecture a model card names.
pub fn by_name(name: &str) -> Result<&'static Architecture, UnknownArchitecture> {
    KNOWN
        .into_iter()
        .find(|a| a.name == name)
        .ok_or_else(|| UnknownArchitecture(name.to_string()))
}

const fn conv(c_in: usize, c_out: usize, kernel: usize, stride: usize, pad: usize) -> Op {
    Op::Conv(ConvSpec {
        c_in,
        c_out,
        kernel,
        stride,
        pad,
    })
}

/// A stride-2 ceil-mode max pool (torchvision's `maxpool1` … `maxpool4`).
const fn ceil_pool(kernel: usize) -> Op {
    Op::MaxPool(PoolGeometry {
        kernel,
        stride: 2,
        pad: 0,
        ceil: true,
    })
}

const fn inception(
    c_in: usize,
    ch1x1: usize,
    ch3x3red: usize,
    ch3x3: usize,
    ch5x5red: usize,
    ch5x5: usize,
    pool_proj: usize,
) -> Op {
    Op::Inception(InceptionSpec {
        c_in,
        ch1x1,
        ch3x3red,
        ch3x3,
        ch5x5red,
        ch5x5,
        pool_proj,
    })
}

/// GoogLeNet (Inception v1), as torchvision defines it: Szegedy et al., "Going Deeper with
/// Convolutions" (CVPR 2015), with ceil-mode pools and the 3×3 convolution in the "5×5" branch.
/// With one 1000-class head and no auxiliary classifiers it has 6,624,904 parameters.
pub const GOOGLENET: Architecture = Architecture {
    name: "googlenet",
    embedding_dim: 1024,
    stages: &[
        Stage {
            name: "conv1",
            op: conv(3, 64, 7, 2, 3),
        },
        Stage {
            name: "maxpool1",
            op: ceil_pool(3),
        },
        Stage {
            name: "conv2",
            op: conv(64, 64, 1, 1, 0),
        },
        Stage {
            name: "conv3",
            op: conv(64, 192, 3, 1, 1),
        },
        Stage {
            name: "maxpool2",
            op: ceil_pool(3),
        },
        Stage {
            name: "inception3a",
            op: inception(192, 64, 96, 128, 16, 32, 32),
        },
        Stage {
            name: "inception3b",
            op: inception(256, 128, 128, 192, 32, 96, 64),
        },
        Stage {
            name: "maxpool3",
            op: ceil_pool(3),
        },
        Stage {
            name: "inception4a",
            op: inception(480, 192, 96, 208, 16, 48, 64),
        },
        Stage {
            name: "inception4b",
            op: inception(512, 160, 112, 224, 24, 64, 64),
        },
        Stage {
            name: "inception4c",
            op: inception(512, 128, 128, 256, 24, 64, 64),
        },
        Stage {
            name: "inception4d",
            op: inception(512, 112, 144, 288, 32, 64, 64),
        },
        Stage {
            name: "inception4e",
            op: inception(528, 256, 160, 320, 32, 128, 128),
        },
        Stage {
            name: "maxpool4",
            op: ceil_pool(2),
        },
        Stage {
            name: "inception5a",
            op: inception(832, 256, 160, 320, 32, 128, 128),
        },
        Stage {
            name: "inception5b",
            op: inception(832, 384, 192, 384, 48, 128, 128),
        },
        Stage {
            name: "avgpool",
            op: Op::GlobalAveragePool,
        },
    ],
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Each stage's input channels are what the stage before it produces, and the last stage's
    /// output is the embedding width: a typo in the table fails here.
    #[test]
    fn googlenet_channels_chain_from_the_image_to_the_embedding() {
        let mut channels = 3;
        for stage in GOOGLENET.stages {
            match stage.op {
                Op::Conv(c) => {
                    assert_eq!(c.c_in, channels, "{}", stage.name);
                    channels = c.c_out;
                }
                Op::Inception(s) => {
                    assert_eq!(s.c_in, channels, "{}", stage.name);
                    for b in s.branches() {
                        assert!(b.convs.windows(2).all(|w| w[0].c_out == w[1].c_in));
                    }
                    let sum: usize = s.branches().iter().map(Branch::c_out).sum();
                    assert_eq!(sum, s.c_out());
                    channels = s.c_out();
                }
                Op::MaxPool(_) | Op::GlobalAveragePool => {}
            }
        }
        assert_eq!(channels, GOOGLENET.embedding_dim);
        assert_eq!(
            GOOGLENET.stages.last().map(|s| s.op),
            Some(Op::GlobalAveragePool)
        );
    }

    #[test]
    fn branch_convolutions_have_torchvision_names() {
        let names: Vec<String> = match GOOGLENET.stages[5].op {
            Op::Inception(s) => s
                .branches()
                .iter()
                .enumerate()
                .flat_map(|(i, b)| (0..b.convs.len()).map(move |j| b.conv_name(i + 1, j)))
                .collect(),
            other => panic!("stage 5 is {other:?}"),
        };
        assert_eq!(
            names,
            [
                "branch1",
                "branch2.0",
                "branch2.1",
                "branch3.0",
                "branch3.1",
                "branch4.1"
            ]
        );
    }

    #[test]
    fn freezable_layers_and_card_names() {
        let layers = GOOGLENET.layer_names();
        assert_eq!(layers.len(), 13);
        assert_eq!(
            (layers[0], layers[3], layers[12]),
            ("conv1", "inception3a", "fc")
        );
        assert_eq!(GOOGLENET.inception_blocks().len(), 9);
        assert_eq!(by_name("googlenet").unwrap(), &GOOGLENET);
        let err = by_name("resnet50").unwrap_err().to_string();
        assert!(
            err.contains("resnet50") && err.contains("googlenet"),
            "{err}"
        );
    }
}
