//! The scorer against Azure Blob storage (Azurite): models and data uploaded, a fleet scored from
//! `az://` URLs (long CSV and partitioned layout), predictions and logs read back; the CLI with a
//! mounted account-key file instead of the key in the environment.
//!
//! Run: `testenv/with-env -- cargo test -p fleetscore-testenv --test scorer_azurite`
// Test helpers may unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use fleetscore_scorer::data::csv::{CsvOptions, parse};
use fleetscore_scorer::data::generate::{GenerateSpec, generate};
use fleetscore_scorer::data::partition::partition;
use fleetscore_scorer::fleet::{FleetSpec, SensorSelection, score_fleet};
use fleetscore_scorer::model::train::{TrainParams, train};
use fleetscore_testenv::azurite::{AzuriteSettings, store, unique_container_name};
use fleetscore_testenv::skip::skip_or_fail;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};

/// Azurite's settings when the scorer can reach it through the environment (as in a Job).
fn azurite() -> Option<AzuriteSettings> {
    let Some(settings) = AzuriteSettings::from_env() else {
        skip_or_fail(
            "no Azurite: AZURITE_BLOB_STORAGE_URL is not set (run inside testenv/with-env)",
        );
        return None;
    };
    if std::env::var("AZURE_STORAGE_USE_EMULATOR").as_deref() != Ok("true") {
        skip_or_fail(
            "AZURE_STORAGE_USE_EMULATOR=true is not set, so the scorer would not use Azurite",
        );
        return None;
    }
    Some(settings)
}

async fn put(store: &Arc<dyn ObjectStore>, path: &str, data: Bytes) {
    store
        .put(&StorePath::from(path), data.into())
        .await
        .unwrap();
}

async fn get(store: &Arc<dyn ObjectStore>, path: &str) -> String {
    let bytes = store
        .get(&StorePath::from(path))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Uploads a 3 × 2 fleet's readings (long CSV and partitioned) and native models.
async fn upload_fleet(store: &Arc<dyn ObjectStore>) {
    let spec = GenerateSpec {
        devices: 3,
        tags: 2,
        duration_ms: 4 * 3_600_000,
        anomaly_rate: 0.01,
        ..GenerateSpec::default()
    };
    let mut csv = Vec::new();
    generate(&spec, &mut csv).unwrap();
    let parts = partition("readings.csv", &csv).unwrap();
    for p in parts.parts {
        put(store, &format!("parts/{}", p.path), p.content).await;
    }
    let buf = Bytes::from(csv);
    let parsed = parse("readings.csv", &buf, &CsvOptions::default()).unwrap();
    let params = TrainParams {
        nu: 0.05,
        max_rows: 200,
        ..TrainParams::default()
    };
    for (sensor, series) in &parsed.sensors {
        let x = ndarray::Array2::from_shape_vec((series.len(), 1), series.values.clone()).unwrap();
        let model = train(x.view(), &params).unwrap();
        put(
            store,
            &format!("models/{}.json", sensor.model_stem()),
            Bytes::from(model.to_native_bytes().unwrap()),
        )
        .await;
    }
    put(store, "data/readings.csv", buf).await;
}

#[tokio::test]
async fn a_fleet_scored_from_azure_blob_writes_predictions_and_logs_back_to_it() {
    let Some(settings) = azurite() else { return };
    let container = unique_container_name("scorer");
    let store = store(&settings, &container).await.unwrap();
    upload_fleet(&store).await;

    let az = |p: &str| format!("az://{container}/{p}");
    let mut spec = FleetSpec {
        models: az("models"),
        data: az("data/readings.csv"),
        output: az("out"),
        run_id: "long".into(),
        sensors: SensorSelection::All,
        aggregation: None,
        strict: false,
        max_bad_rows_percent: fleetscore_scorer::fleet::DEFAULT_MAX_BAD_ROWS_PERCENT,
        threads: Some(2),
        device_features: None,
    };
    let summary = score_fleet(&spec, |_| {}).await.unwrap();
    assert!(summary.all_succeeded(), "{}", summary.render());
    assert_eq!(summary.sensors, 6);
    assert_eq!(summary.rows, 6 * 240);

    let preds = get(&store, "out/long/preds/preds_2_1.csv").await;
    assert!(
        preds.starts_with("TS,Device,Tag,Val,Prediction,Score\n2018-08-28 23:00:00.000,2,1,"),
        "{preds}"
    );
    assert_eq!(preds.lines().count(), 241);
    let log: serde_json::Value =
        serde_json::from_str(&get(&store, "out/long/logs/2_1.json").await).unwrap();
    assert_eq!(log["outcome"], "Succeeded");
    assert_eq!(log["rows"], 240);
    assert_eq!(log["model"], az("models/model_2_1.json"));

    // The partitioned layout gives the same predictions.
    spec.data = az("parts");
    spec.run_id = "parts".into();
    let summary = score_fleet(&spec, |_| {}).await.unwrap();
    assert!(summary.all_succeeded(), "{}", summary.render());
    let mut same = BTreeMap::new();
    for s in ["1_1", "2_2", "3_2"] {
        let a = get(&store, &format!("out/long/preds/preds_{s}.csv")).await;
        let b = get(&store, &format!("out/parts/preds/preds_{s}.csv")).await;
        same.insert(s, a == b);
    }
    assert!(same.values().all(|v| *v), "{same:?}");
}

#[tokio::test]
async fn the_cli_reads_a_mounted_account_key_file_and_reports_a_missing_model() {
    let Some(settings) = azurite() else { return };
    let bin = fleetscore_testenv::podexec::default_scorer_bin();
    if !bin.exists() {
        skip_or_fail(format!(
            "the scorer binary {} is not built (cargo build -p fleetscore-scorer)",
            bin.display()
        ));
        return;
    }
    let container = unique_container_name("scorer-cli");
    let store = store(&settings, &container).await.unwrap();
    upload_fleet(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("azurestorageaccountkey");
    std::fs::write(&key_file, format!("{}\n", settings.key)).unwrap();

    let az = |p: &str| format!("az://{container}/{p}");
    let out = std::process::Command::new(&bin)
        .args([
            "score",
            "--models",
            &az("models"),
            "--data",
            &az("data/readings.csv"),
            "--output",
            &az("out"),
        ])
        .args([
            "--run-id",
            "cli",
            "--sensor",
            "1:2",
            "--sensor",
            "9:9",
            "--progress",
            "never",
        ])
        .env_remove("AZURE_STORAGE_ACCOUNT_KEY")
        .env("AZURE_STORAGE_ACCOUNT_KEY_FILE", &key_file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // 3: the only failure is a missing model, which no retry fixes.
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("no model model_9_9"), "{text}");
    let ok: serde_json::Value =
        serde_json::from_str(&get(&store, "out/cli/logs/1_2.json").await).unwrap();
    assert_eq!(ok["outcome"], "Succeeded", "{ok}");
    let failed: serde_json::Value =
        serde_json::from_str(&get(&store, "out/cli/logs/9_9.json").await).unwrap();
    assert_eq!(failed["outcome"], "Failed");
    assert!(
        get(&store, "out/cli/preds/preds_1_2.csv")
            .await
            .lines()
            .count()
            > 1
    );
}
