//! Fuzz target: the model reader (pickle VM, scikit-learn converter, native JSON) must return
//! Ok or Err on any input, never panic, hang or exhaust memory.
#![cfg_attr(fuzzing, no_main)]

fn check(data: &[u8]) {
    if let Ok(model) = fleetscore_scorer::model::Model::from_bytes(data) {
        // A model that loads must also score and serialise without panicking.
        let x = ndarray::Array2::<f64>::zeros((3, model.n_features().min(64)));
        let _ = model.decision_function(x.view());
        let _ = model.to_native_bytes();
        let _ = model.info();
    }
}

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| check(data));

#[cfg(not(fuzzing))]
fn main() {
    fleetscore_scorer_fuzz::smoke("pickle", &[b"\x80\x04}\x94.", b"{\"format\": \"fleetscore-ocsvm\"}"], check);
}
