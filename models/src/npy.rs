//! NumPy's `.npy` format (version 1.0, little-endian float32), for handing arrays to and from
//! Python tools: `animelens embed`'s matrices, the ONNX export's parity samples, and the vector
//! sets `bench index` shares with hnswlib and faiss.

use std::io::{Error, ErrorKind};
use std::path::Path;

/// The `.npy` bytes of a C-order float32 array of `shape`.
pub fn encode(shape: &[usize], values: &[f32]) -> Vec<u8> {
    debug_assert_eq!(shape.iter().product::<usize>(), values.len());
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + values.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes an `(rows, cols)` matrix, one row per vector (all rows as long as the first).
pub fn write_matrix(path: &Path, rows: &[Vec<f32>]) -> std::io::Result<()> {
    let cols = rows.first().map_or(0, Vec::len);
    let values: Vec<f32> = rows.iter().flatten().copied().collect();
    std::fs::write(path, encode(&[rows.len(), cols], &values))
}

/// Reads a 2-D C-order float32 (or float64, converted) `.npy` matrix as one vector per row.
pub fn read_matrix(path: &Path) -> std::io::Result<Vec<Vec<f32>>> {
    decode_matrix(&std::fs::read(path)?).map_err(|reason| {
        Error::new(
            ErrorKind::InvalidData,
            format!(
                "{} is not a 2-D float32 .npy matrix ({reason}); write it with numpy.save(path, array.astype('float32'))",
                path.display()
            ),
        )
    })
}

/// The rows of `.npy` bytes (see [`read_matrix`]).
fn decode_matrix(bytes: &[u8]) -> Result<Vec<Vec<f32>>, String> {
    let (header, data) = match bytes {
        [0x93, b'N', b'U', b'M', b'P', b'Y', 1, 0, lo, hi, rest @ ..] => {
            let len = u16::from_le_bytes([*lo, *hi]) as usize;
            let header = rest.get(..len).ok_or("header cut short")?;
            (
                std::str::from_utf8(header).map_err(|_| "header is not text")?,
                &rest[len..],
            )
        }
        [0x93, b'N', b'U', b'M', b'P', b'Y', ..] => {
            return Err("only format version 1.0 is read".into())
        }
        _ => return Err("no .npy magic".into()),
    };
    let field = |name: &str| -> Result<&str, String> {
        let at = header
            .find(&format!("'{name}':"))
            .ok_or(format!("no {name} in header"))?;
        Ok(header[at + name.len() + 3..].trim_start())
    };
    let width = match field("descr")? {
        d if d.starts_with("'<f4'") => 4,
        d if d.starts_with("'<f8'") => 8,
        d => {
            return Err(format!(
                "element type {} (want '<f4')",
                d.split(',').next().unwrap_or(d)
            ))
        }
    };
    if !field("fortran_order")?.starts_with("False") {
        return Err("Fortran order".into());
    }
    let shape = field("shape")?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("unreadable shape")?;
    let dims: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse().map_err(|_| format!("unreadable shape ({inner})")))
        .collect::<Result<_, _>>()?;
    let [rows, cols] = dims[..] else {
        return Err(format!("{}-D array", dims.len()));
    };
    let needed = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(width))
        .ok_or("shape too large")?;
    if data.len() != needed {
        return Err(format!(
            "{} data bytes for shape ({rows}, {cols})",
            data.len()
        ));
    }
    let values: Vec<f32> = match width {
        4 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        _ => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
    };
    Ok(values
        .chunks(cols.max(1))
        .take(rows)
        .map(<[f32]>::to_vec)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_padded_to_64_bytes_and_data_follows_little_endian() {
        let bytes = encode(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert!(header.contains("'shape': (2, 3)"), "{header}");
        assert!(header.ends_with('\n'));
        let data = &bytes[10 + header_len..];
        assert_eq!(data.len(), 24);
        assert_eq!(f32::from_le_bytes(data[20..24].try_into().unwrap()), 6.0);
        let scalar_row = encode(&[4], &[0.0; 4]);
        assert!(String::from_utf8_lossy(&scalar_row).contains("'shape': (4,)"));
    }

    #[test]
    fn matrices_round_trip_and_bad_files_say_what_is_wrong() {
        let rows = vec![vec![1.0f32, -2.5, 3.0], vec![0.0, 4.0, 5.5]];
        let values: Vec<f32> = rows.iter().flatten().copied().collect();
        assert_eq!(decode_matrix(&encode(&[2, 3], &values)).unwrap(), rows);
        // A float64 file: numpy's header for a (1, 2) '<f8' array, then the values.
        let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2), }\n";
        let mut f64s = b"\x93NUMPY\x01\x00".to_vec();
        f64s.extend((header.len() as u16).to_le_bytes());
        f64s.extend(header.as_bytes());
        f64s.extend(1.5f64.to_le_bytes());
        f64s.extend((-2.0f64).to_le_bytes());
        assert_eq!(decode_matrix(&f64s).unwrap(), vec![vec![1.5, -2.0]]);
        assert!(decode_matrix(&encode(&[4], &[0.0; 4]))
            .unwrap_err()
            .contains("1-D"));
        let mut short = encode(&[2, 3], &values);
        short.pop();
        assert!(decode_matrix(&short).unwrap_err().contains("data bytes"));
        assert!(decode_matrix(b"PK\x03\x04").unwrap_err().contains("magic"));
    }
}
