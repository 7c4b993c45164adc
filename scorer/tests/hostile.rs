//! Hostile inputs built in code: each must fail fast with a clear error, never take the process
//! (and every other sensor in it) down by exhausting memory.
#![allow(clippy::unwrap_used)]

use std::io::Write;

use fleetscore_scorer::model::Model;

/// `]` then `(` + `)`×1000 + `e` repeated: one empty tuple appended per byte.
fn tuples_appended(bytes: usize) -> Vec<u8> {
    let mut p = b"\x80\x02]".to_vec();
    while p.len() < bytes {
        p.push(b'(');
        p.extend(std::iter::repeat_n(b')', 1000));
        p.push(b'e');
    }
    p.push(b'.');
    p
}

#[test]
fn a_tiny_zlib_joblib_file_that_inflates_to_millions_of_objects_is_a_model_error() {
    // 100 MB of opcodes in a ~290 KB file: ~10 GB of heap without the VM's budget (the issue's
    // 15 KB file reached 1.4 GB RSS, the 65 KB one aborted the process).
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&tuples_appended(100 << 20)).unwrap();
    let file = z.finish().unwrap();
    assert!(file.len() < 512 << 10, "{}", file.len());
    let err = Model::from_bytes(&file).unwrap_err().to_string();
    assert!(err.contains("more than 256 MiB of memory"), "{err}");
}
