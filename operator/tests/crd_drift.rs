//! The committed `crds/*.yaml` match what the Rust types generate.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

#[test]
fn the_committed_crds_match_the_rust_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    for (file, crd) in fleetscore_operator::crd::all() {
        let want = fleetscore_operator::crd::to_yaml(&crd).unwrap();
        let path = dir.join(file);
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} is out of date with operator/src/crd: run scripts/crdgen",
            path.display()
        );
    }
}
