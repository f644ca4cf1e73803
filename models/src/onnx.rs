//! ONNX export: the serving network written as an ONNX graph (opset 17) for ONNX Runtime,
//! TensorRT or any other runtime.
//!
//! The graph is written by walking the same architecture table the training and folded networks
//! are built from, stage by stage, with the folded network's weights: every conv → BatchNorm →
//! ReLU is one `Conv` (BatchNorm folded into its weights and bias) and one `Relu`; pools keep
//! torchvision's ceil mode (GoogLeNet's ceil-mode pools have no padding, so ONNX's and PyTorch's
//! ceil rules agree); an Inception block is its branches and a `Concat`. Batch and image size are
//! dynamic. Only standard operators of the default domain are used.
//!
//! Inputs and outputs: `images` `(N, 3, H, W)` float32, preprocessed as the model card says
//! (resized to `input_size`, scaled to [-1, 1], in the card's colour space); `embedding`
//! `(N, D)`, the L2-normalised pooled feature the catalogue stores; `logits_<level>`
//! `(N, classes)` for every head, in head order. The card's labels and preprocessing travel in
//! the file's metadata (`animelens.card`), so the file is usable on its own.

use crate::architecture::Op;
use crate::checkpoint::ModelCard;
use crate::folded::{FoldedConv, FoldedNetwork, FoldedStage};
use crate::head::Head;
use crate::ops::PoolGeometry;
use candle_core::{DType, Tensor};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::{dimension, Dimension};
use onnx_protobuf::type_proto::{self, Value};
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The operator set the graph is written for.
pub const OPSET: i64 = 17;

/// The IR version that goes with [`OPSET`] (ONNX 1.12).
const IR_VERSION: i64 = 8;

/// Name of the graph's input.
pub const INPUT: &str = "images";

/// Name of the normalised-embedding output.
pub const EMBEDDING: &str = "embedding";

/// Name of head `level`'s logits output.
pub fn logits_output(level: &str) -> String {
    format!("logits_{level}")
}

/// Why a network could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// Reading the network's weights failed.
    #[error("cannot read the network's weights: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The card and the network disagree.
    #[error("the model card does not match the network: {0}")]
    Card(String),
    /// Protobuf encoding failed.
    #[error("cannot encode the ONNX file: {0}")]
    Encode(#[from] protobuf::Error),
}

/// Builds the graph: nodes, initialisers, and a name for every intermediate value.
struct GraphWriter {
    graph: GraphProto,
}

fn int_attribute(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::INT.into(),
        i: value,
        ..Default::default()
    }
}

fn ints_attribute(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::INTS.into(),
        ints: values.to_vec(),
        ..Default::default()
    }
}

/// A float32 tensor value's type, with named (dynamic) or fixed dimensions.
fn float_value(name: &str, dims: &[Result<i64, &str>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Ok(n) => dimension::Value::DimValue(*n),
                Err(param) => dimension::Value::DimParam((*param).into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        type_: Some(TypeProto {
            value: Some(Value::TensorType(type_proto::Tensor {
                elem_type: DataType::FLOAT as i32,
                shape: Some(TensorShapeProto {
                    dim,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// `kernel_shape`, `strides` and `pads` of a square window (Conv and MaxPool share them).
fn window_attributes(kernel: usize, stride: usize, pad: usize) -> Vec<AttributeProto> {
    let (k, s, p) = (kernel as i64, stride as i64, pad as i64);
    vec![
        ints_attribute("kernel_shape", &[k, k]),
        ints_attribute("strides", &[s, s]),
        ints_attribute("pads", &[p, p, p, p]),
    ]
}

fn pool_attributes(pool: PoolGeometry) -> Vec<AttributeProto> {
    let mut attributes = window_attributes(pool.kernel, pool.stride, pool.pad);
    attributes.push(int_attribute("ceil_mode", i64::from(pool.ceil)));
    attributes
}

impl GraphWriter {
    /// Adds a float32 initialiser.
    fn initializer(&mut self, name: &str, dims: &[usize], values: &[f32]) {
        self.graph.initializer.push(TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::FLOAT as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
    }

    /// Adds a node whose single output is named after the node; returns that name.
    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> String {
        self.graph.node.push(NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.into()],
            attribute: attributes,
            ..Default::default()
        });
        name.to_string()
    }

    /// Conv with the folded BatchNorm as its bias, then ReLU; returns the ReLU's output.
    fn conv(&mut self, name: &str, conv: &FoldedConv, c_in: usize, input: &str) -> String {
        let g = conv.geometry;
        let (weight, bias) = (format!("{name}.weight"), format!("{name}.bias"));
        let o = conv.out_channels();
        self.initializer(&weight, &[o, c_in, g.kernel, g.kernel], &conv.weight);
        self.initializer(&bias, &[o], &conv.bias);
        let attributes = window_attributes(g.kernel, g.stride, g.pad);
        let y = self.node(
            "Conv",
            &format!("{name}.conv"),
            &[input, &weight, &bias],
            attributes,
        );
        self.node("Relu", &format!("{name}.relu"), &[&y], vec![])
    }

    fn max_pool(&mut self, name: &str, pool: PoolGeometry, input: &str) -> String {
        self.node("MaxPool", name, &[input], pool_attributes(pool))
    }
}

/// A head's logits from the pooled feature (linear) or the normalised embedding (cosine).
fn head_logits(
    writer: &mut GraphWriter,
    head: &Head,
    prefix: &str,
    pooled: &str,
    embedding: &str,
    output: &str,
) -> Result<(), OnnxError> {
    match head {
        Head::Linear(linear) => {
            let w = linear.weight().to_dtype(DType::F32)?;
            let (classes, dim) = w.dims2()?;
            let (weight, bias) = (format!("{prefix}.weight"), format!("{prefix}.bias"));
            writer.initializer(&weight, &[classes, dim], &w.flatten_all()?.to_vec1()?);
            let b = match linear.bias() {
                Some(b) => b.to_dtype(DType::F32)?.to_vec1()?,
                None => vec![0.0; classes],
            };
            writer.initializer(&bias, &[classes], &b);
            writer.graph.node.push(NodeProto {
                op_type: "Gemm".into(),
                name: format!("{prefix}.gemm"),
                input: vec![pooled.into(), weight, bias],
                output: vec![output.into()],
                attribute: vec![int_attribute("transB", 1)],
                ..Default::default()
            });
        }
        Head::Cosine { weight, scale } => {
            // scale · cos θ = embedding · (scale · ŵ)ᵀ: the class weights normalised and scaled once.
            let w = crate::layers::l2_normalise(&weight.to_dtype(DType::F32)?)?;
            let scaled: Tensor = (w.t()?.contiguous()? * *scale)?;
            let (dim, classes) = scaled.dims2()?;
            let name = format!("{prefix}.scaled_unit_weight");
            writer.initializer(&name, &[dim, classes], &scaled.flatten_all()?.to_vec1()?);
            writer.graph.node.push(NodeProto {
                op_type: "MatMul".into(),
                name: format!("{prefix}.matmul"),
                input: vec![embedding.into(), name],
                output: vec![output.into()],
                ..Default::default()
            });
        }
    }
    Ok(())
}

/// The folded network's stage `name` is not the kind of stage its table says.
fn mismatch(name: &str) -> OnnxError {
    OnnxError::Card(format!("stage {name} differs from its architecture table"))
}

/// The ONNX file (serialised `ModelProto`) for `net`, whose checkpoint's card is `card`.
pub fn export(net: &FoldedNetwork, card: &ModelCard) -> Result<Vec<u8>, OnnxError> {
    let architecture = net.architecture();
    if card.heads.len() != net.heads().len() {
        return Err(OnnxError::Card(format!(
            "{} heads on the card, {} in the network",
            card.heads.len(),
            net.heads().len()
        )));
    }
    let mut w = GraphWriter {
        graph: GraphProto {
            name: architecture.name.into(),
            ..Default::default()
        },
    };
    let (batch, height, width) = (Err("batch"), Err("height"), Err("width"));
    w.graph
        .input
        .push(float_value(INPUT, &[batch, Ok(3), height, width]));
    let mut x = INPUT.to_string();
    let mut pooled = None;
    for (stage, folded) in architecture.stages.iter().zip(net.stages()) {
        match folded {
            FoldedStage::Conv(conv) => {
                let Op::Conv(spec) = stage.op else {
                    return Err(mismatch(stage.name));
                };
                x = w.conv(stage.name, conv, spec.c_in, &x);
            }
            FoldedStage::MaxPool(pool) => x = w.max_pool(stage.name, *pool, &x),
            FoldedStage::Inception(block) => {
                let Op::Inception(spec) = stage.op else {
                    return Err(mismatch(stage.name));
                };
                let mut outputs = Vec::new();
                for (i, (plan, branch)) in spec.branches().iter().zip(&block.branches).enumerate() {
                    let mut y = x.clone();
                    if let Some(pool) = branch.pool {
                        y = w.max_pool(&format!("{}.branch{}.0", stage.name, i + 1), pool, &y);
                    }
                    for (j, (conv_plan, conv)) in plan.convs.iter().zip(&branch.convs).enumerate() {
                        let name = format!("{}.{}", stage.name, plan.conv_name(i + 1, j));
                        y = w.conv(&name, conv, conv_plan.c_in, &y);
                    }
                    outputs.push(y);
                }
                let inputs: Vec<&str> = outputs.iter().map(String::as_str).collect();
                x = w.node(
                    "Concat",
                    &format!("{}.concat", stage.name),
                    &inputs,
                    vec![int_attribute("axis", 1)],
                );
            }
            FoldedStage::GlobalAveragePool => {
                let y = w.node("GlobalAveragePool", stage.name, &[&x], vec![]);
                pooled = Some(w.node("Flatten", "pooled", &[&y], vec![int_attribute("axis", 1)]));
            }
        }
    }
    let pooled = pooled.ok_or_else(|| {
        OnnxError::Card(format!(
            "architecture {} does not end with a global average pool",
            architecture.name
        ))
    })?;
    let dim = architecture.embedding_dim;
    // embedding = pooled / max(‖pooled‖, 1e-12), as `layers::l2_normalise`.
    let norm = w.node(
        "ReduceL2",
        "pooled_norm",
        &[&pooled],
        vec![ints_attribute("axes", &[1]), int_attribute("keepdims", 1)],
    );
    w.initializer("norm_floor", &[], &[1e-12]);
    let floor = w.node("Max", "pooled_norm_floored", &[&norm, "norm_floor"], vec![]);
    w.graph.node.push(NodeProto {
        op_type: "Div".into(),
        name: "normalise".into(),
        input: vec![pooled.clone(), floor],
        output: vec![EMBEDDING.into()],
        ..Default::default()
    });
    w.graph
        .output
        .push(float_value(EMBEDDING, &[batch, Ok(dim as i64)]));
    for (i, (head, spec)) in net.heads().iter().zip(card.head_specs()).enumerate() {
        let output = logits_output(&spec.level);
        head_logits(
            &mut w,
            head,
            &spec.param_prefix(i),
            &pooled,
            EMBEDDING,
            &output,
        )?;
        w.graph
            .output
            .push(float_value(&output, &[batch, Ok(spec.classes as i64)]));
    }
    let model = ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
            ..Default::default()
        }],
        producer_name: "animelens".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!(
            "{} from AnimeLens checkpoint {}: input `images` (N, 3, H, W) preprocessed as the card says; outputs `embedding` and `logits_<level>`",
            architecture.name, card.fingerprint
        ),
        graph: Some(w.graph).into(),
        metadata_props: vec![StringStringEntryProto {
            key: "animelens.card".into(),
            value: serde_json::to_string(card).expect("cards serialise"),
            ..Default::default()
        }],
        ..Default::default()
    };
    Ok(model.write_to_bytes()?)
}

/// A named float32 array, C order.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedArray {
    /// The graph input's or output's name.
    pub name: String,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values.
    pub values: Vec<f32>,
}

/// A parity sample: `batch` seeded random images of `size` px (values in [-1, 1], like
/// preprocessed pictures) as the graph's input, and what this engine's folded network answers
/// for them under the graph's output names, so that any runtime can be checked against the
/// exported file.
pub fn parity_sample(
    net: &FoldedNetwork,
    card: &ModelCard,
    batch: usize,
    size: usize,
    seed: u64,
) -> Result<Vec<NamedArray>, OnnxError> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let shape = vec![batch, 3, size, size];
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| rng.random_range(-1.0f32..=1.0))
        .collect();
    let x = Tensor::from_vec(values.clone(), shape.as_slice(), &candle_core::Device::Cpu)?;
    let out = net.forward(&x)?;
    let array = |name: String, t: &Tensor| -> Result<NamedArray, OnnxError> {
        Ok(NamedArray {
            name,
            shape: t.dims().to_vec(),
            values: t.flatten_all()?.to_vec1()?,
        })
    };
    let mut arrays = vec![
        NamedArray {
            name: INPUT.into(),
            shape,
            values,
        },
        array(EMBEDDING.into(), &out.embedding)?,
    ];
    for (logits, head) in out.logits.iter().zip(&card.heads) {
        arrays.push(array(logits_output(&head.level), logits)?);
    }
    Ok(arrays)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::architecture::{Op, GOOGLENET};
    use crate::checkpoint::{build, HeadCard};
    use crate::head::HeadKind;
    use crate::preprocess::Preprocessing;
    use std::collections::HashMap;

    fn card(kind: HeadKind) -> ModelCard {
        let head = |level: &str, classes: usize| HeadCard {
            level: level.into(),
            labels: (0..classes).map(|i| format!("{level}{i}")).collect(),
        };
        let heads = vec![head("character", 5), head("work", 2)];
        ModelCard {
            head: kind,
            dropout: 0.5,
            fingerprint: "f".into(),
            ..ModelCard::untrained(Preprocessing::new(64), heads)
        }
    }

    fn exported(kind: HeadKind) -> ModelProto {
        let model = build(&card(kind)).unwrap();
        let net = FoldedNetwork::new(&model.net).unwrap();
        let bytes = export(&net, &model.card).unwrap();
        ModelProto::parse_from_bytes(&bytes).unwrap()
    }

    /// The file read back has one Conv + Relu per convolution of the table, a MaxPool per pool
    /// and per Inception block's pool branch, a Concat per block, the embedding and one output
    /// per head; every node input is the graph input, an initialiser or an earlier node's output.
    #[test]
    fn the_graph_read_back_follows_the_architecture_table() {
        let model = exported(HeadKind::Linear);
        assert_eq!(model.opset_import[0].version, OPSET);
        assert!(model.opset_import[0].domain.is_empty());
        let graph = model.graph.as_ref().unwrap();
        let count = |op: &str| graph.node.iter().filter(|n| n.op_type == op).count();
        let (mut convs, mut pools, mut blocks) = (0, 0, 0);
        for stage in GOOGLENET.stages {
            match stage.op {
                Op::Conv(_) => convs += 1,
                Op::MaxPool(_) => pools += 1,
                Op::Inception(spec) => {
                    blocks += 1;
                    for b in spec.branches() {
                        convs += b.convs.len();
                        pools += usize::from(b.pool.is_some());
                    }
                }
                Op::GlobalAveragePool => {}
            }
        }
        assert_eq!((convs, pools, blocks), (57, 13, 9));
        assert_eq!(count("Conv"), convs);
        assert_eq!(count("Relu"), convs);
        assert_eq!(count("MaxPool"), pools);
        assert_eq!(count("Concat"), blocks);
        assert_eq!(count("GlobalAveragePool"), 1);
        assert_eq!(count("Gemm"), 2);
        assert!(graph.node.iter().all(|n| n.domain.is_empty()));
        let outputs: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outputs, [EMBEDDING, "logits_character", "logits_work"]);
        assert_eq!(graph.input[0].name, INPUT);

        let initialisers: HashMap<&str, &TensorProto> = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let weight = initialisers["inception4e.branch2.1.weight"];
        assert_eq!(weight.dims, [320, 160, 3, 3]);
        assert_eq!(weight.raw_data.len(), 320 * 160 * 9 * 4);
        assert_eq!(initialisers["fc_work.weight"].dims, [2, 1024]);
        let mut known: std::collections::HashSet<&str> =
            initialisers.keys().copied().chain([INPUT]).collect();
        for node in &graph.node {
            for input in &node.input {
                assert!(
                    known.contains(input.as_str()),
                    "{} reads unknown {input}",
                    node.name
                );
            }
            known.extend(node.output.iter().map(String::as_str));
        }
        let pool = graph.node.iter().find(|n| n.name == "maxpool4").unwrap();
        let ceil = pool
            .attribute
            .iter()
            .find(|a| a.name == "ceil_mode")
            .unwrap();
        assert_eq!(ceil.i, 1);
        let card: ModelCard = serde_json::from_str(&model.metadata_props[0].value).unwrap();
        assert_eq!(card.heads[1].labels, ["work0", "work1"]);
    }

    /// A cosine head becomes one MatMul on the normalised embedding with the unit class weights
    /// scaled once: its columns have norm `scale`.
    #[test]
    fn cosine_heads_are_a_matmul_on_the_embedding() {
        let model = exported(HeadKind::Cosine { scale: 30.0 });
        let graph = model.graph.as_ref().unwrap();
        let matmuls: Vec<&NodeProto> = graph
            .node
            .iter()
            .filter(|n| n.op_type == "MatMul")
            .collect();
        assert_eq!(matmuls.len(), 2);
        assert_eq!(matmuls[0].input[0], EMBEDDING);
        let w = graph
            .initializer
            .iter()
            .find(|t| t.name == matmuls[0].input[1])
            .unwrap();
        assert_eq!(w.dims, [1024, 5]);
        let values: Vec<f32> = w
            .raw_data
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let column: f32 = (0..1024)
            .map(|r| values[r * 5 + 3].powi(2))
            .sum::<f32>()
            .sqrt();
        assert!((column - 30.0).abs() < 1e-3, "{column}");
    }

    #[test]
    fn parity_samples_are_seeded_and_named_after_the_graph() {
        let model = build(&card(HeadKind::Linear)).unwrap();
        let net = FoldedNetwork::new(&model.net).unwrap();
        let a = parity_sample(&net, &model.card, 2, 64, 7).unwrap();
        let b = parity_sample(&net, &model.card, 2, 64, 7).unwrap();
        assert_eq!(a, b);
        let names: Vec<&str> = a.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, [INPUT, EMBEDDING, "logits_character", "logits_work"]);
        assert_eq!(a[0].shape, [2, 3, 64, 64]);
        assert_eq!(a[3].shape, [2, 2]);
        assert!(a[0].values.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}
