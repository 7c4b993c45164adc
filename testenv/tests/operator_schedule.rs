//! ScoringSchedule on the real control plane: the schedule controller runs in-process with an
//! injectable clock (a [`ScaledClock`] running 20–60× real time, or jumped forward to simulate
//! downtime), one controller per test namespace. Most tests finish runs by patching their status
//! as the run controller would, proving the schedule's behaviour alone; the `end_to_end_` tests
//! run the real run controller too, with kwok pods that stay Running for a while.
//!
//! Run: `testenv/with-env -- cargo test -p fleetscore-testenv --test operator_schedule`

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fleetscore_operator::crd::run::ScoringRun;
use fleetscore_operator::crd::schedule::{
    SCHEDULED_AT_ANNOTATION, ScoringSchedule, TRIGGER_ANNOTATION, WINDOW_END_ANNOTATION,
    WINDOW_START_ANNOTATION,
};
use fleetscore_operator::run::context::{Context, RunConfig};
use fleetscore_operator::run::controller as run_controller;
use fleetscore_operator::run::metrics::RunMetrics;
use fleetscore_operator::schedule::clock::{Clock, ScaledClock};
use fleetscore_operator::schedule::controller::{build_run, run_controller};
use fleetscore_operator::schedule::metrics::ScheduleMetrics;
use fleetscore_operator::schedule::naming::trigger_run_name;
use fleetscore_operator::schedule::slots::CronSchedule;
use fleetscore_testenv::events::events_with_reason;
use fleetscore_testenv::{TestEnv, eventually, wait_for};
use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt, ResourceExt};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Longest any test waits for one expected state (real time).
const TIMEOUT: Duration = Duration::from_secs(40);

/// Installs (or updates) both fleetscore CRDs and waits until they are served.
async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [ScoringRun::crd(), ScoringSchedule::crd()] {
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply("fleetscore-test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot apply CRD {name}: {e}"));
        wait_for(
            &crds,
            &name,
            "be established",
            |c: &CustomResourceDefinition| {
                c.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    })
            },
            TIMEOUT,
        )
        .await
        .unwrap();
    }
}

/// A schedule controller running in the background for one namespace.
struct Operator {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<()>,
    metrics: ScheduleMetrics,
}

impl Operator {
    fn start(client: &Client, ns: &str, clock: &Arc<ScaledClock>) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let clock: Arc<dyn Clock> = clock.clone();
        let metrics = ScheduleMetrics::default();
        let handle = tokio::spawn(run_controller(
            client.clone(),
            clock,
            metrics.clone(),
            Some(ns.to_string()),
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            stop,
            handle,
            metrics,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(TIMEOUT, self.handle).await;
    }
}

/// A schedule scoring one sensor, with `spec` fields merged over the defaults.
fn schedule(name: &str, cron: &str, spec: serde_json::Value) -> ScoringSchedule {
    let mut body = json!({
        "schedule": cron,
        "runTemplate": { "spec": {
            "sensors": { "list": [{ "device": "1", "tag": "4" }] },
            "storage": { "models": "/tmp/models", "data": "/tmp/data.csv", "output": "/tmp/out" }
        }}
    });
    if let (Some(base), Some(extra)) = (body.as_object_mut(), spec.as_object()) {
        base.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "fleetscore.dev/v1alpha1",
        "kind": "ScoringSchedule",
        "metadata": { "name": name },
        "spec": body,
    }))
    .unwrap()
}

/// Creates a schedule, retrying while the freshly installed CRD is not yet routable.
async fn create(client: &Client, ns: &str, sched: &ScoringSchedule) -> ScoringSchedule {
    let api: Api<ScoringSchedule> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    loop {
        match api.create(&PostParams::default(), sched).await {
            Ok(created) => return created,
            Err(kube::Error::Api(s)) if s.is_not_found() && start.elapsed() < TIMEOUT => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot create schedule {}: {e}", sched.name_any()),
        }
    }
}

/// The namespace's runs, oldest slot first, with their slots.
async fn runs(client: &Client, ns: &str) -> Vec<(DateTime<Utc>, ScoringRun)> {
    let api: Api<ScoringRun> = Api::namespaced(client.clone(), ns);
    let mut runs: Vec<(DateTime<Utc>, ScoringRun)> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .map(|r| {
            let slot = DateTime::parse_from_rfc3339(&r.annotations()[SCHEDULED_AT_ANNOTATION])
                .unwrap()
                .with_timezone(&Utc);
            (slot, r)
        })
        .collect();
    runs.sort_by_key(|(slot, _)| *slot);
    runs
}

/// Finishes a run the way the run controller would: status.phase by server-side apply.
async fn finish(client: &Client, ns: &str, run: &str, phase: &str) {
    let api: Api<ScoringRun> = Api::namespaced(client.clone(), ns);
    let body = json!({
        "apiVersion": "fleetscore.dev/v1alpha1",
        "kind": "ScoringRun",
        "status": { "phase": phase },
    });
    api.patch_status(
        run,
        &PatchParams::apply("fake-run-controller").force(),
        &Patch::Apply(body),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot finish run {run}: {e}"));
}

async fn get_schedule(client: &Client, ns: &str, name: &str) -> ScoringSchedule {
    Api::<ScoringSchedule>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap()
}

fn condition<'a>(
    s: &'a ScoringSchedule,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    s.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// A test environment with the CRDs installed, or `None` (skipped) without one.
async fn env() -> Option<TestEnv> {
    let env = TestEnv::for_test().await?;
    install_crds(&env.client).await;
    Some(env)
}

#[tokio::test]
async fn runs_appear_on_time_once_per_slot_with_status_and_columns() {
    let Some(env) = env().await else { return };
    let kubectl_env = env.clone();
    env.with_temp_ns(|client, ns| async move {
        // 20× real time: a per-minute schedule fires every 3 s.
        let clock = Arc::new(ScaledClock::new(Utc::now(), 20.0));
        create(
            &client,
            &ns,
            &schedule("every-minute", "* * * * *", json!({})),
        )
        .await;
        let op = Operator::start(&client, &ns, &clock);
        let mut lags = Vec::new();
        let mut seen = BTreeSet::new();
        let start = Instant::now();
        while seen.len() < 3 {
            assert!(
                start.elapsed() < TIMEOUT,
                "timed out waiting for three runs; saw {seen:?}"
            );
            for (slot, run) in runs(&client, &ns).await {
                if seen.insert(run.name_any()) {
                    lags.push((clock.now() - slot).num_milliseconds());
                    assert_eq!(
                        run.name_any(),
                        format!("every-minute-{}", slot.format("%Y%m%d%H%M"))
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        op.stop().await;
        // Observed within 45 clock seconds (about 2 s of real time) of the slot.
        assert!(
            lags.iter().all(|lag| (0..45_000).contains(lag)),
            "lags in clock ms: {lags:?}"
        );
        let all = runs(&client, &ns).await;
        let slots: Vec<DateTime<Utc>> = all.iter().map(|(s, _)| *s).collect();
        for pair in slots.windows(2) {
            assert_eq!(
                pair[1] - pair[0],
                chrono::Duration::minutes(1),
                "consecutive slots: {slots:?}"
            );
        }
        let newest = *slots.last().unwrap();
        let sched = get_schedule(&client, &ns, "every-minute").await;
        let status = sched.status.clone().unwrap();
        assert_eq!(status.last_schedule_time, Some(newest));
        assert_eq!(
            status.next_schedule_time,
            Some(newest + chrono::Duration::minutes(1))
        );
        assert_eq!(status.active_count as usize, all.len());
        let out = kubectl_env
            .kubectl()
            .args(["get", "scoringschedules", "-n", &ns])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let header: Vec<&str> = text
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            [
                "NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "RUN", "NEXT", "RUN",
                "AGE"
            ],
            "{text}"
        );
    })
    .await;
}

#[tokio::test]
async fn forbid_skips_slots_while_a_run_is_active_and_resumes_after_it_finishes() {
    let Some(env) = env().await else { return };
    env.with_temp_ns(|client, ns| async move {
        let clock = Arc::new(ScaledClock::new(Utc::now(), 30.0));
        create(
            &client,
            &ns,
            &schedule(
                "forbid",
                "* * * * *",
                json!({"concurrencyPolicy": "Forbid"}),
            ),
        )
        .await;
        let op = Operator::start(&client, &ns, &clock);
        let first = eventually("the first run exists", TIMEOUT, || {
            let (client, ns) = (client.clone(), ns.clone());
            async move { runs(&client, &ns).await.into_iter().next() }
        })
        .await;
        let skipped = eventually("a slot was skipped", TIMEOUT, || {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                let s = get_schedule(&client, &ns, "forbid").await;
                let missed = s.status.as_ref().map_or(0, |st| st.missed_slots);
                (missed >= 1).then_some(s)
            }
        })
        .await;
        assert_eq!(
            runs(&client, &ns).await.len(),
            1,
            "Forbid must not start a second run"
        );
        let cond = condition(&skipped, "Missed").expect("Missed condition");
        assert_eq!(
            (cond.status.as_str(), cond.reason.as_str()),
            ("True", "SlotsSkipped")
        );
        assert!(
            !events_with_reason(&client, &ns, "Skipped").await.is_empty(),
            "a Skipped event"
        );
        finish(&client, &ns, &first.1.name_any(), "Succeeded").await;
        let second = eventually("a second run after the first finished", TIMEOUT, || {
            let (client, ns) = (client.clone(), ns.clone());
            async move { runs(&client, &ns).await.into_iter().nth(1) }
        })
        .await;
        let skipped_slot = skipped.status.unwrap().last_schedule_time.unwrap();
        assert!(
            second.0 > skipped_slot,
            "second run {} must come after the skipped slot {skipped_slot}",
            second.0
        );
        assert!(
            op.metrics.slot_count("skipped") >= 1,
            "skipped slots are counted"
        );
        assert!(op.metrics.reconciles.get() >= 2);
        op.stop().await;
    })
    .await;
}

#[tokio::test]
async fn replace_deletes_the_active_run_when_the_next_slot_comes() {
    let Some(env) = env().await else { return };
    env.with_temp_ns(|client, ns| async move {
        let clock = Arc::new(ScaledClock::new(Utc::now(), 30.0));
        create(
            &client,
            &ns,
            &schedule(
                "replace",
                "* * * * *",
                json!({"concurrencyPolicy": "Replace"}),
            ),
        )
        .await;
        let op = Operator::start(&client, &ns, &clock);
        let first = eventually("the first run exists", TIMEOUT, || {
            let (client, ns) = (client.clone(), ns.clone());
            async move { runs(&client, &ns).await.into_iter().next() }
        })
        .await;
        let later = eventually("a later run replaced the first", TIMEOUT, || {
            let (client, ns, first) = (client.clone(), ns.clone(), first.1.name_any());
            async move {
                let all = runs(&client, &ns).await;
                (all.len() == 1 && all[0].1.name_any() != first).then(|| all[0].clone())
            }
        })
        .await;
        assert!(later.0 > first.0);
        assert!(
            !events_with_reason(&client, &ns, "Replaced")
                .await
                .is_empty(),
            "a Replaced event"
        );
        op.stop().await;
    })
    .await;
}

#[tokio::test]
async fn allow_lets_runs_of_several_slots_be_active_together() {
    let Some(env) = env().await else { return };
    env.with_temp_ns(|client, ns| async move {
        let clock = Arc::new(ScaledClock::new(Utc::now(), 30.0));
        create(&client, &ns, &schedule("allow", "* * * * *", json!({}))).await;
        let op = Operator::start(&client, &ns, &clock);
        eventually(
            "three active runs are listed in the status",
            TIMEOUT,
            || {
                let (client, ns) = (client.clone(), ns.clone());
                async move {
                    let s = get_schedule(&client, &ns, "allow").await;
                    let status = s.status?;
                    (status.active_count >= 3 && status.active.len() >= 3).then_some(())
                }
            },
        )
        .await;
        op.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_suspended_schedule_creates_nothing_and_on_resume_runs_the_latest_missed_slot() {
    let Some(env) = env().await else { return };
    env.with_temp_ns(|client, ns| async move {
        let clock = Arc::new(ScaledClock::new(Utc::now(), 60.0));
        create(
            &client,
            &ns,
            &schedule("paused", "* * * * *", json!({"suspend": true})),
        )
        .await;
        let op = Operator::start(&client, &ns, &clock);
        let suspended = eventually("the Suspended condition is set", TIMEOUT, || {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                let s = get_schedule(&client, &ns, "paused").await;
                condition(&s, "Suspended")
                    .is_some_and(|c| c.status == "True")
                    .then_some(s)
            }
        })
        .await;
        assert!(
            suspended
                .status
                .as_ref()
                .unwrap()
                .next_schedule_time
                .is_none()
        );
        // Three more clock minutes pass while suspended.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            runs(&client, &ns).await.is_empty(),
            "no run while suspended"
        );
        let api: Api<ScoringSchedule> = Api::namespaced(client.clone(), &ns);
        let resumed_at = clock.now();
        api.patch(
            "paused",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": false}})),
        )
        .await
        .unwrap();
        let resumed_after = clock.now();
        let first = eventually("a run after resuming", TIMEOUT, || {
            let (client, ns) = (client.clone(), ns.clone());
            async move { runs(&client, &ns).await.into_iter().next() }
        })
        .await;
        // As CronJob: the slots that passed while suspended are missed slots; the latest of them
        // runs at once (no burst of the older ones, which are counted as missed).
        assert!(
            first.0 > resumed_at - chrono::Duration::minutes(1),
            "first slot {} vs resume {resumed_at}",
            first.0
        );
        assert!(
            first.0 <= resumed_after + chrono::Duration::seconds(30),
            "the catch-up run comes at once: {} vs {resumed_after}",
            first.0
        );
        eventually(
            "the older suspended slots are counted as missed",
            TIMEOUT,
            || {
                let (client, ns) = (client.clone(), ns.clone());
                async move {
                    (get_schedule(&client, &ns, "paused")
                        .await
                        .status?
                        .missed_slots
                        >= 2)
                        .then_some(())
                }
            },
        )
        .await;
        op.stop().await;
        let all = runs(&client, &ns).await;
        let during = all.iter().filter(|(slot, _)| *slot <= resumed_at).count();
        assert!(
            during <= 1,
            "at most the latest suspended slot runs: {all:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn the_trigger_subcommand_runs_the_current_slot_once_per_value() {
    let Some(env) = env().await else { return };
    let Some(bin) = operator_binary() else {
        fleetscore_testenv::skip::skip_or_fail(
            "the fleetscore binary is not built (cargo build --workspace)",
        );
        return;
    };
    let kubeconfig = env.kubeconfig();
    env.with_temp_ns(|client, ns| async move {
        let clock = Arc::new(ScaledClock::new(Utc::now(), 1.0));
        create(
            &client,
            &ns,
            &schedule("manual", "0 * * * *", json!({"timeZone": "Asia/Kathmandu"})),
        )
        .await;
        let op = Operator::start(&client, &ns, &clock);
        let trigger = || {
            let out = std::process::Command::new(&bin)
                .args(["trigger", "manual", "-n", &ns])
                .env("KUBECONFIG", &kubeconfig)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "fleetscore trigger: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(
                text.contains("scoringschedule.fleetscore.dev/manual triggered"),
                "{text}"
            );
        };
        trigger();
        let cron = CronSchedule::parse("0 * * * *", Some("Asia/Kathmandu")).unwrap();
        let current = cron
            .previous_before(clock.now() + chrono::Duration::seconds(1))
            .unwrap();
        let (slot, run) = eventually("the triggered run exists", TIMEOUT, || {
            let (client, ns) = (client.clone(), ns.clone());
            async move { runs(&client, &ns).await.into_iter().next() }
        })
        .await;
        assert_eq!(slot, current, "the current slot");
        let value = run.annotations()[TRIGGER_ANNOTATION].clone();
        assert_eq!(run.name_any(), trigger_run_name("manual", slot, &value));
        assert_eq!(
            run.annotations()[WINDOW_START_ANNOTATION],
            cron.previous_before(slot)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        assert_eq!(
            run.annotations()[WINDOW_END_ANNOTATION],
            slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        let s = eventually("the status records the trigger", TIMEOUT, || {
            let (client, ns, value) = (client.clone(), ns.clone(), value.clone());
            async move {
                let s = get_schedule(&client, &ns, "manual").await;
                (s.status.as_ref()?.last_trigger.as_deref() == Some(value.as_str())).then_some(s)
            }
        })
        .await;
        assert_eq!(s.status.as_ref().unwrap().active_count, 1);
        // A triggered run does not count as the slot's scheduled run.
        // (Created after the slot, the schedule had nothing due: a later hour may have come.)
        assert!(
            s.status
                .as_ref()
                .unwrap()
                .last_schedule_time
                .is_none_or(|t| t > slot),
            "{:?}",
            s.status
        );
        assert!(
            !events_with_reason(&client, &ns, "Triggered")
                .await
                .is_empty(),
            "a Triggered event"
        );
        // Reconciles of the same value create nothing more; a new value one more run.
        let api: Api<ScoringSchedule> = Api::namespaced(client.clone(), &ns);
        api.patch(
            "manual",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"poke": "1"}}})),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            runs(&client, &ns).await.len(),
            1,
            "one run per trigger value"
        );
        trigger();
        eventually("a second triggered run", TIMEOUT, || {
            let (client, ns) = (client.clone(), ns.clone());
            async move { (runs(&client, &ns).await.len() == 2).then_some(()) }
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(runs(&client, &ns).await.len(), 2);
        assert!(op.metrics.slot_count("triggered") >= 2);
        op.stop().await;
    })
    .await;
}

/// The `fleetscore` binary built for this test run: `FLEETSCORE_OPERATOR_BIN`, or next to the test
/// binary's directory (`target/<profile>/fleetscore`, built by `cargo test --workspace`).
fn operator_binary() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("FLEETSCORE_OPERATOR_BIN") {
        return Some(std::path::PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    Some(profile_dir.join("fleetscore")).filter(|p| p.is_file())
}

#[tokio::test]
async fn the_api_server_admits_exactly_the_schedules_the_controller_parses() {
    let Some(env) = env().await else { return };
    env.with_temp_ns(|client, ns| async move {
        // Wait until the CRD is routable, with a valid object.
        create(&client, &ns, &schedule("valid", "@hourly", json!({}))).await;
        let api: Api<ScoringSchedule> = Api::namespaced(client.clone(), &ns);
        let mut exprs: Vec<String> = [
            "5/15 * * * *",
            "*,15 * * * *",
            "0 0 1,* * MON",
            "@every 1h",
            "@every 90m",
            "? ? * * *",
            "+5 * * * *",
            "1,,2 * * * *",
            "005 * * * *",
            " 0 * * * * ",
            "0 0 * * FRI-SUN",
            "0 0 * * FRI-7",
            "0 0 * * fr\u{130}",
            "0\u{a0}0 * * *",
            "0\u{85}0\u{3000}* * *",
            "@every 2562048h",
            "@every 1\u{b5}s",
            "*-TZ * * * *",
            "61 * * * *",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        exprs.extend(fleetscore_operator::schedule::cron::sample_expressions(
            3, 600,
        ));
        let dry = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        let started = Instant::now();
        // Batched: many dry-run creates in flight at once.
        let results: Vec<(String, Result<(), String>)> =
            futures::stream::iter(exprs.into_iter().enumerate())
                .map(|(i, expr)| {
                    let (api, dry) = (api.clone(), dry.clone());
                    async move {
                        let obj = schedule(&format!("dry-{i}"), &expr, json!({}));
                        let result = api
                            .create(&dry, &obj)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string());
                        (expr, result)
                    }
                })
                .buffer_unordered(16)
                .collect()
                .await;
        let (mut admitted, mut refused) = (0, 0);
        let mismatches: Vec<String> = results
            .iter()
            .filter(|(expr, result)| CronSchedule::parse(expr, None).is_ok() != result.is_ok())
            .map(|(expr, result)| {
                format!(
                    "{expr:?}: API server {}",
                    if result.is_ok() { "admits" } else { "refuses" }
                )
            })
            .collect();
        assert!(
            mismatches.is_empty(),
            "the API server and the controller disagree: {mismatches:#?}"
        );
        for (expr, result) in &results {
            let parsed = CronSchedule::parse(expr, None);
            match result {
                Ok(()) => {
                    assert!(
                        parsed.is_ok(),
                        "the API server admits {expr:?}, the controller refuses it: {parsed:?}"
                    );
                    admitted += 1;
                }
                Err(e) => {
                    assert!(
                        parsed.is_err(),
                        "the API server refuses {expr:?}, the controller parses it: {e}"
                    );
                    // Our message, or CEL's error for an @every duration past ±292 years.
                    assert!(
                        e.contains(fleetscore_operator::schedule::cron::ALLOWED)
                            || e.contains("duration"),
                        "{expr:?}: {e}"
                    );
                    refused += 1;
                }
            }
        }
        eprintln!(
            "{admitted} admitted, {refused} refused in {:?}",
            started.elapsed()
        );
        assert!(
            admitted > 50 && refused > 50,
            "{admitted} admitted, {refused} refused"
        );
    })
    .await;
}

#[tokio::test]
async fn backfill_after_downtime_creates_exactly_the_bounded_missed_runs() {
    let Some(env) = env().await else { return };
    env.with_temp_ns(|client, ns| async move {
        let clock = Arc::new(ScaledClock::new(Utc::now(), 1.0));
        let sched = create(
            &client,
            &ns,
            &schedule("hourly", "0 * * * *", json!({"backfill": {"limit": 2}})),
        )
        .await;
        let op = Operator::start(&client, &ns, &clock);
        eventually("the next run time is known", TIMEOUT, || {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                get_schedule(&client, &ns, "hourly")
                    .await
                    .status?
                    .next_schedule_time
            }
        })
        .await;
        op.stop().await;
        // The operator is down for five hourly slots.
        let cron = CronSchedule::parse("0 * * * *", None).unwrap();
        let created = DateTime::<Utc>::from_timestamp(
            sched
                .metadata
                .creation_timestamp
                .as_ref()
                .unwrap()
                .0
                .as_second(),
            0,
        )
        .unwrap();
        clock.advance(chrono::Duration::hours(5));
        let due = cron.missed_between(created, clock.now(), 3);
        assert!(due.total >= 5, "{due:?}");
        let expected_missed = i64::try_from(due.total).unwrap() - 3;
        let op = Operator::start(&client, &ns, &clock);
        eventually("three runs exist", TIMEOUT, || {
            let (client, ns) = (client.clone(), ns.clone());
            async move { (runs(&client, &ns).await.len() >= 3).then_some(()) }
        })
        .await;
        let s = eventually("the status counts two missed slots", TIMEOUT, || {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                let s = get_schedule(&client, &ns, "hourly").await;
                (s.status.as_ref()?.missed_slots == expected_missed).then_some(s)
            }
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let counted = (
            op.metrics.slot_count("created"),
            op.metrics.slot_count("missed"),
        );
        op.stop().await;
        assert_eq!(
            counted,
            (3, u64::try_from(expected_missed).unwrap()),
            "fleetscore_schedule_slots_total by outcome"
        );
        let slots: Vec<DateTime<Utc>> = runs(&client, &ns)
            .await
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(slots, due.slots, "exactly the newest three missed slots");
        assert_eq!(
            condition(&s, "Missed").map(|c| c.status.as_str()),
            Some("True")
        );
    })
    .await;
}

#[tokio::test]
async fn history_limits_prune_the_oldest_finished_runs() {
    let Some(env) = env().await else { return };
    env.with_temp_ns(|client, ns| async move {
        let clock = Arc::new(ScaledClock::new(Utc::now(), 60.0));
        let limits = json!({"successfulRunsHistoryLimit": 1, "failedRunsHistoryLimit": 1});
        create(&client, &ns, &schedule("pruned", "* * * * *", limits)).await;
        let op = Operator::start(&client, &ns, &clock);
        let mut finished = BTreeSet::new();
        let start = Instant::now();
        while finished.len() < 6 {
            assert!(
                start.elapsed() < TIMEOUT,
                "timed out finishing six runs; finished {finished:?}"
            );
            for (_, run) in runs(&client, &ns).await {
                let name = run.name_any();
                if run.status.as_ref().and_then(|s| s.phase).is_none() && !finished.contains(&name)
                {
                    let phase = if finished.len() % 2 == 0 {
                        "Succeeded"
                    } else {
                        "Failed"
                    };
                    finish(&client, &ns, &name, phase).await;
                    finished.insert(name);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let s = eventually(
            "at most one succeeded and one failed run remain",
            TIMEOUT,
            || {
                let (client, ns) = (client.clone(), ns.clone());
                async move {
                    let all = runs(&client, &ns).await;
                    let count = |p: &str| {
                        all.iter()
                            .filter(|(_, r)| {
                                r.status
                                    .as_ref()
                                    .and_then(|s| s.phase)
                                    .is_some_and(|ph| ph.as_str() == p)
                            })
                            .count()
                    };
                    let s = get_schedule(&client, &ns, "pruned").await;
                    (count("Succeeded") <= 1
                        && count("Failed") <= 1
                        && s.status.as_ref()?.last_failure_time.is_some())
                    .then_some(s)
                }
            },
        )
        .await;
        op.stop().await;
        let status = s.status.unwrap();
        assert!(status.last_successful_time.is_some() && status.last_failure_time.is_some());
    })
    .await;
}

#[tokio::test]
async fn two_replicas_and_a_restart_mid_tick_never_create_a_slot_twice() {
    let Some(env) = env().await else { return };
    env.with_temp_ns(|client, ns| async move {
        let clock = Arc::new(ScaledClock::new(Utc::now(), 1.0));
        let sched = create(&client, &ns, &schedule("once", "0 * * * *", json!({}))).await;
        // A previous operator created the run for the next slot and died before writing status.
        let cron = CronSchedule::parse("0 * * * *", None).unwrap();
        let slot = cron.next_after(clock.now()).unwrap();
        let api: Api<ScoringRun> = Api::namespaced(client.clone(), &ns);
        let early = api
            .create(&PostParams::default(), &build_run(&sched, &cron, slot))
            .await
            .unwrap();
        clock.advance(slot - clock.now() + chrono::Duration::seconds(10));
        // Two replicas start at once.
        let a = Operator::start(&client, &ns, &clock);
        let b = Operator::start(&client, &ns, &clock);
        eventually("the slot is recorded as handled", TIMEOUT, || {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                let s = get_schedule(&client, &ns, "once").await;
                (s.status?.last_schedule_time == Some(slot)).then_some(())
            }
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        a.stop().await;
        b.stop().await;
        let all = runs(&client, &ns).await;
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].1.uid(), early.uid(), "the run was not recreated");
    })
    .await;
}

#[tokio::test]
async fn the_api_server_refuses_a_bad_cron_or_zone_and_the_controller_flags_an_unknown_zone() {
    let Some(env) = env().await else { return };
    env.with_temp_ns(|client, ns| async move {
        let api: Api<ScoringSchedule> = Api::namespaced(client.clone(), &ns);
        // Wait until the CRD is routable, with a valid object.
        create(&client, &ns, &schedule("valid", "@hourly", json!({}))).await;
        let err = api
            .create(
                &PostParams::default(),
                &schedule("bad-cron", "61 * * * *", json!({})),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(fleetscore_operator::schedule::cron::ALLOWED),
            "{err}"
        );
        let err = api
            .create(
                &PostParams::default(),
                &schedule("bad-zone", "0 * * * *", json!({"timeZone": "+02:00"})),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("timeZone must be an IANA time zone name"),
            "{err}"
        );
        // Well-formed but unknown: the controller reports it.
        create(
            &client,
            &ns,
            &schedule("mars", "0 * * * *", json!({"timeZone": "Mars/Olympus"})),
        )
        .await;
        let clock = Arc::new(ScaledClock::new(Utc::now(), 1.0));
        let op = Operator::start(&client, &ns, &clock);
        let s = eventually("the Invalid condition is set", TIMEOUT, || {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                let s = get_schedule(&client, &ns, "mars").await;
                condition(&s, "Invalid")
                    .is_some_and(|c| c.status == "True")
                    .then_some(s)
            }
        })
        .await;
        op.stop().await;
        let cond = condition(&s, "Invalid").unwrap();
        assert_eq!(cond.reason, "UnknownTimeZone");
        assert!(cond.message.contains("Mars/Olympus"), "{}", cond.message);
        assert!(runs(&client, &ns).await.is_empty());
    })
    .await;
}

/// The run controller for one namespace (the real one: Jobs, kwok pods, phases).
fn start_run_controller(client: &Client, ns: &str) -> JoinHandle<()> {
    let config = RunConfig {
        namespace: Some(ns.to_string()),
        resync: Duration::from_secs(2),
        debounce: Duration::from_millis(200),
        read_ledger: false,
        ..RunConfig::default()
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(RunMetrics::default()),
        config,
    ));
    tokio::spawn(run_controller::run(ctx))
}

/// A run template whose kwok pods stay Running for `run_for` (real time).
fn long_running(policy: &str, run_for: &str) -> serde_json::Value {
    json!({
        "concurrencyPolicy": policy,
        "runTemplate": { "spec": {
            "sensors": { "list": [{ "device": "1", "tag": "4" }] },
            "storage": { "models": "/nonexistent/models", "data": "/nonexistent/parts", "output": "/nonexistent/out", "partition": "Never" },
            "backoffLimit": 0,
            "podAnnotations": { "kwok.fleetscore.dev/run-for": run_for },
        }}
    })
}

fn is_finished(run: &ScoringRun) -> bool {
    run.status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(|p| p.is_finished())
}

#[tokio::test]
async fn end_to_end_forbid_never_overlaps_long_runs_and_skips_their_slots() {
    let Some(env) = env().await else { return };
    env.with_temp_ns(|client, ns| async move {
        let runner = start_run_controller(&client, &ns);
        // A slot every 3 s; each run's pod stays Running 8 s.
        let clock = Arc::new(ScaledClock::new(Utc::now(), 20.0));
        create(
            &client,
            &ns,
            &schedule("forbid-e2e", "* * * * *", long_running("Forbid", "8s")),
        )
        .await;
        let op = Operator::start(&client, &ns, &clock);
        let start = Instant::now();
        let mut max_active = 0;
        let mut first_finished = false;
        loop {
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "timed out: the second run never came"
            );
            let all = runs(&client, &ns).await;
            let active = all.iter().filter(|(_, r)| !is_finished(r)).count();
            max_active = max_active.max(active);
            first_finished |= all.first().is_some_and(|(_, r)| is_finished(r));
            if all.len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        op.stop().await;
        runner.abort();
        assert!(
            first_finished,
            "the second run came only after the first finished"
        );
        assert_eq!(max_active, 1, "Forbid: never two active runs");
        let s = get_schedule(&client, &ns, "forbid-e2e").await;
        assert!(
            s.status.unwrap().missed_slots >= 1,
            "slots during the long run were skipped"
        );
        assert!(!events_with_reason(&client, &ns, "Skipped").await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn end_to_end_replace_ends_the_long_run_and_its_jobs_at_the_next_slot() {
    let Some(env) = env().await else { return };
    env.with_temp_ns(|client, ns| async move {
        let runner = start_run_controller(&client, &ns);
        let clock = Arc::new(ScaledClock::new(Utc::now(), 20.0));
        create(
            &client,
            &ns,
            &schedule("replace-e2e", "* * * * *", long_running("Replace", "60s")),
        )
        .await;
        let op = Operator::start(&client, &ns, &clock);
        let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), &ns);
        // The first run gets its Job.
        let first = eventually("the first run has a Job", TIMEOUT, || {
            let (client, ns, jobs) = (client.clone(), ns.clone(), jobs.clone());
            async move {
                let (_, run) = runs(&client, &ns).await.into_iter().next()?;
                let selector = format!("fleetscore.dev/run={}", run.name_any());
                let has_job = !jobs
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .ok()?
                    .items
                    .is_empty();
                has_job.then_some(run.name_any())
            }
        })
        .await;
        eventually(
            "a later run replaced the first and its Jobs are gone",
            TIMEOUT,
            || {
                let (client, ns, jobs, first) =
                    (client.clone(), ns.clone(), jobs.clone(), first.clone());
                async move {
                    let all = runs(&client, &ns).await;
                    let replaced =
                        all.iter().all(|(_, r)| r.name_any() != first) && !all.is_empty();
                    let selector = format!("fleetscore.dev/run={first}");
                    let jobs_left = jobs
                        .list(&ListParams::default().labels(&selector))
                        .await
                        .ok()?
                        .items;
                    let jobs_gone = jobs_left
                        .iter()
                        .all(|j| j.metadata.deletion_timestamp.is_some());
                    (replaced && jobs_gone).then_some(())
                }
            },
        )
        .await;
        op.stop().await;
        runner.abort();
    })
    .await;
}
