//! `fleetscore`: the operator (`fleetscore operator`) and the embedded local runner
//! (`fleetscore run --local FILE.yaml`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use clap::{Parser, Subcommand, ValueEnum};
use fleetscore_operator::run::context::{Context, RunConfig};
use fleetscore_operator::run::controller as run_controller;
use fleetscore_operator::run::jobs::PodDefaults;
use fleetscore_operator::run::local::{self, LocalOptions, Manifest};
use fleetscore_operator::run::metrics::RunMetrics;
use fleetscore_operator::{cli, scaler, schedule};
use indicatif::{ProgressBar, ProgressStyle};
use k8s_openapi::api::core::v1::Toleration;
use prometheus_client::registry::Registry;

/// Scores one anomaly-detection model per IoT sensor: a Kubernetes operator, or one machine.
#[derive(Parser, Debug)]
#[command(name = "fleetscore", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
// One value of this enum exists per process: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the controllers (ScoringRun, ScoringSchedule, node-pool scaler) with /metrics,
    /// /healthz and /readyz. Reads the kubeconfig or in-cluster credentials.
    Operator(OperatorArgs),
    /// Score a ScoringRun (or ScoringSchedule) manifest on this machine, without Kubernetes.
    Run(RunArgs),
    /// Rebuild a run's report.html from its ledger: `fleetscore report <output>/<run>`.
    Report(ReportArgs),
    /// Score a finished run's failed sensors again (sets the `fleetscore.dev/rerun-failed`
    /// annotation; the operator creates the new run).
    Rerun(RerunArgs),
    /// A run's status, failed sensors with reasons, and where its outputs and report are.
    Describe(RunRef),
    /// One sensor's ledger record and the log of the pod that scored it.
    Logs(LogsArgs),
    /// Run a ScoringSchedule's current slot now, once (as `kubectl create job --from=cronjob/x`):
    /// sets its `fleetscore.dev/trigger` annotation to a new value. Reads the kubeconfig.
    Trigger(TriggerArgs),
}

#[derive(clap::Args, Debug)]
struct ReportArgs {
    /// The run's output folder, `<spec.storage.output>/<run>` (local path, file://, az://).
    url: String,
}

#[derive(clap::Args, Debug)]
struct RunRef {
    /// The ScoringRun's name.
    run: String,
    /// Namespace of the run (default: the kubeconfig context's).
    #[arg(short, long)]
    namespace: Option<String>,
}

#[derive(clap::Args, Debug)]
struct RerunArgs {
    #[command(flatten)]
    run: RunRef,
    /// Rerun the failed sensors (the only kind of rerun).
    #[arg(long, required = true)]
    failed: bool,
}

#[derive(clap::Args, Debug)]
struct LogsArgs {
    #[command(flatten)]
    run: RunRef,
    /// The sensor, `DEVICE:TAG`.
    #[arg(long, value_parser = parse_sensor)]
    sensor: fleetscore_scorer::sensor::SensorId,
    /// Lines from the end of the pod log.
    #[arg(long, default_value_t = cli::DEFAULT_LOG_LINES)]
    tail: i64,
}

fn parse_sensor(s: &str) -> Result<fleetscore_scorer::sensor::SensorId, String> {
    s.parse()
        .map_err(|e: fleetscore_scorer::sensor::SensorError| e.to_string())
}

#[derive(clap::Args, Debug)]
struct TriggerArgs {
    /// The ScoringSchedule.
    schedule: String,
    /// Its namespace (default: the kubeconfig context's namespace).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
}

#[derive(clap::Args, Debug)]
struct OperatorArgs {
    /// Address of the HTTP server (/metrics, /healthz, /readyz).
    #[arg(long, env = "FLEETSCORE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "FLEETSCORE_NAMESPACE")]
    namespace: Option<String>,
    /// Log format.
    #[arg(
        long,
        env = "FLEETSCORE_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    log_format: LogFormat,
    /// Seconds a finished scoring Job stays after its outcome is recorded (runs may override).
    #[arg(long, env = "FLEETSCORE_FINISHED_JOB_TTL", default_value_t = 0)]
    finished_job_ttl: i32,
    /// Do not read or write the run ledger in storage (per-sensor records, summary.json).
    #[arg(long, env = "FLEETSCORE_NO_LEDGER")]
    no_ledger: bool,
    /// Scorer image for runs that name none.
    #[arg(long, env = "FLEETSCORE_SCORER_IMAGE")]
    scorer_image: Option<String>,
    /// ServiceAccount of scoring pods whose run sets no workload identity.
    #[arg(long, env = "FLEETSCORE_SCORER_SERVICE_ACCOUNT")]
    scorer_service_account: Option<String>,
    /// Storage Secret (envFrom) for runs without credentials.
    #[arg(long, env = "FLEETSCORE_SCORER_SECRET")]
    scorer_secret: Option<String>,
    /// Node selector of scoring pods whose run sets none, as JSON (e.g. the scoring pool's label:
    /// `{"fleetscore.dev/pool":"scoring"}`).
    #[arg(long, env = "FLEETSCORE_SCORER_NODE_SELECTOR", value_parser = parse_json::<BTreeMap<String, String>>)]
    scorer_node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of scoring pods whose run sets none, as a JSON list of Kubernetes tolerations.
    #[arg(long, env = "FLEETSCORE_SCORER_TOLERATIONS", value_parser = parse_json::<Tolerations>)]
    scorer_tolerations: Option<Tolerations>,
    /// Disable the ScoringSchedule controller.
    #[arg(long)]
    no_schedules: bool,
    /// Act only while holding the Lease `--lease-name` (replicas > 1): a standby waits and takes
    /// over within the lease duration once the leader is gone.
    #[arg(long, env = "FLEETSCORE_LEADER_ELECT")]
    leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "FLEETSCORE_LEASE_NAME",
        default_value = "fleetscore-operator"
    )]
    lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Seconds a leader's Lease lasts without renewal: a standby takes over within this.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Seconds before expiry at which the leader renews.
    #[arg(long, default_value_t = 5)]
    lease_grace_seconds: u64,
    #[command(flatten)]
    scaler: scaler::ScalerArgs,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Score locally (the only mode of this command).
    #[arg(long, required = true)]
    local: bool,
    /// The manifest: a ScoringRun (or ScoringSchedule); local paths are relative to the current
    /// directory.
    file: PathBuf,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Write predictions and ledger here instead of `spec.storage.output`.
    #[arg(long)]
    output: Option<String>,
    /// Progress bar: auto (on a terminal), always, never.
    #[arg(long, value_enum, default_value = "auto")]
    progress: Progress,
    /// For a ScoringSchedule: after scoring the latest slot, keep scoring each next slot at its
    /// time (until interrupted).
    #[arg(long)]
    keep_running: bool,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum Progress {
    Auto,
    Always,
    Never,
}

fn main() -> std::process::ExitCode {
    // The workspace enables both rustls providers (kube: ring, reqwest: aws-lc-rs), so rustls
    // cannot pick one and panics at the first TLS client unless one is installed; Err = already set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Under the kubectl plugin name (`kubectl fleetscore ...`) the commands are the same; only
    // the usage text names the plugin.
    let argv0 = std::env::args().next().unwrap_or_default();
    let command = <Cli as clap::CommandFactory>::command();
    let command = if cli::invoked_as_kubectl_plugin(&argv0) {
        command.bin_name("kubectl fleetscore")
    } else {
        command
    };
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetscore: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Operator(args) => operator(args).await.map(|()| true),
            Command::Run(args) => run_local(args).await,
            Command::Report(args) => print(cli::report(&args.url).await),
            Command::Rerun(args) => {
                let (client, ns) = kube_client(&args.run).await?;
                print(cli::rerun_failed(&client, &ns, &args.run.run).await)
            }
            Command::Describe(args) => {
                let (client, ns) = kube_client(&args).await?;
                print(cli::describe(&client, &ns, &args.run).await)
            }
            Command::Logs(args) => {
                let (client, ns) = kube_client(&args.run).await?;
                print(cli::logs(&client, &ns, &args.run.run, &args.sensor, args.tail).await)
            }
            Command::Trigger(args) => trigger(args).await.map(|()| true),
        }
    });
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("fleetscore: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Prints a command's text.
fn print(result: Result<String, cli::CliError>) -> anyhow::Result<bool> {
    print!("{}", result?);
    Ok(true)
}

/// A client from the kubeconfig (or in-cluster), and the namespace: the flag's, else the context's.
async fn kube_client(run: &RunRef) -> anyhow::Result<(kube::Client, String)> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (kubeconfig or in-cluster)")?;
    let ns = run
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    Ok((client, ns))
}

/// One JSON list in one flag (an alias, so clap does not take `Vec` for a repeated flag).
type Tolerations = Vec<Toleration>;

/// Parses a flag given as JSON, with serde's message (it names the line, column and field).
fn parse_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_str(s).map_err(|e| format!("not valid JSON for this setting: {e}"))
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[derive(Clone)]
struct HttpState {
    registry: Arc<Registry>,
    ready: Arc<std::sync::atomic::AtomicBool>,
    /// A standby replica (waiting for the Lease) is healthy and ready in its role.
    standby: Arc<std::sync::atomic::AtomicBool>,
}

async fn metrics_handler(State(state): State<HttpState>) -> (StatusCode, String) {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        Ok(()) => (StatusCode::OK, text),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn ready_handler(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok")
    } else if state.standby.load(Ordering::SeqCst) {
        (StatusCode::OK, "standby")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn operator(args: OperatorArgs) -> anyhow::Result<()> {
    init_logs(args.log_format);
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let mut registry = Registry::default();
    let metrics = Arc::new(RunMetrics::register(&mut registry));
    let scaler_metrics = scaler::ScalerMetrics::default();
    scaler_metrics.register(&mut registry);
    let schedule_metrics = schedule::metrics::ScheduleMetrics::default();
    schedule_metrics.register(&mut registry);
    let config = RunConfig {
        namespace: args.namespace.clone(),
        finished_job_ttl_seconds: args.finished_job_ttl,
        read_ledger: !args.no_ledger,
        pod_defaults: PodDefaults {
            image: args.scorer_image.clone(),
            secret: args.scorer_secret.clone(),
            service_account: args.scorer_service_account.clone(),
            node_selector: args.scorer_node_selector.clone().unwrap_or_default(),
            tolerations: args.scorer_tolerations.clone().unwrap_or_default(),
        },
        ..RunConfig::default()
    };
    let scaler_config = args
        .scaler
        .config(args.namespace.clone())
        .context("scaler settings")?;
    let ctx = Arc::new(Context::new(client.clone(), metrics, config));

    let standby = Arc::new(std::sync::atomic::AtomicBool::new(args.leader_elect));
    let state = HttpState {
        registry: Arc::new(registry),
        ready: ctx.ready.clone(),
        standby: standby.clone(),
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    tracing::info!(addr = %args.metrics_addr, namespace = ?args.namespace, "fleetscore operator starting");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let leadership = if args.leader_elect {
        Some(lead(&client, &args).await?)
    } else {
        None
    };
    standby.store(false, Ordering::SeqCst);
    let mut scaler_task = tokio::spawn(scaler::controller::run(
        client.clone(),
        scaler_config,
        scaler_metrics,
    ));
    let schedules = (!args.no_schedules).then(|| {
        let clock: Arc<dyn schedule::clock::Clock> = Arc::new(schedule::clock::SystemClock);
        let namespace = args.namespace.clone();
        tokio::spawn(schedule::controller::run_controller(
            client.clone(),
            clock,
            schedule_metrics,
            namespace,
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        ))
    });
    // The run controller stops on SIGTERM/ctrl-c; then everything else goes with the process. A
    // scaler that stops, or a lost Lease, ends the process with an error: the pod restarts, and
    // with leader election only one replica ever acts.
    let (lost, lease_task) = match leadership {
        Some((rx, task)) => (Some(rx), Some(task)),
        None => (None, None),
    };
    let outcome = tokio::select! {
        () = run_controller::run(ctx) => Ok(()),
        res = &mut scaler_task => Err(match res {
            Ok(Ok(())) => anyhow::anyhow!("the node-pool scaler stopped"),
            Ok(Err(e)) => anyhow::Error::new(e).context("the node-pool scaler stopped"),
            Err(e) => anyhow::anyhow!("the node-pool scaler task ended: {e}"),
        }),
        () = leadership_lost(lost) => Err(anyhow::anyhow!("lost the leader Lease {}/{}", args.lease_namespace, args.lease_name)),
    };
    if let Some(s) = schedules {
        if outcome.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
        } else {
            s.abort();
        }
    }
    scaler_task.abort();
    server.abort();
    // Dropping the channel ends the lease task, which releases the Lease for the standby.
    if let Some(task) = lease_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    outcome
}

/// The Lease's state channel and its task, once this replica holds the Lease.
type Leadership = (
    tokio::sync::watch::Receiver<bool>,
    tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
);

/// Waits until this replica holds the leader Lease (a standby waits here, healthy).
async fn lead(client: &kube::Client, args: &OperatorArgs) -> anyhow::Result<Leadership> {
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "fleetscore".into());
        format!("{host}-{}", std::process::id())
    });
    let params = kube_lease_manager::LeaseParams::new(
        identity.clone(),
        args.lease_duration_seconds,
        args.lease_grace_seconds,
    );
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_parameters(params)
        .build()
        .await
        .with_context(|| {
            format!(
                "leader election on Lease {}/{}",
                args.lease_namespace, args.lease_name
            )
        })?;
    let (mut rx, task) = manager.watch().await;
    tracing::info!(identity = %identity, lease = %args.lease_name, "waiting for the leader Lease");
    while !*rx.borrow_and_update() {
        rx.changed()
            .await
            .context("the leader-election task stopped")?;
    }
    tracing::info!(identity = %identity, lease = %args.lease_name, "holding the leader Lease: starting the controllers");
    Ok((rx, task))
}

/// Resolves when the Lease is lost (never without leader election).
async fn leadership_lost(rx: Option<tokio::sync::watch::Receiver<bool>>) {
    let Some(mut rx) = rx else {
        return std::future::pending().await;
    };
    loop {
        if rx.changed().await.is_err() || !*rx.borrow_and_update() {
            return;
        }
    }
}

/// Scores one run locally with a progress bar and prints its summary; false when a sensor failed.
async fn score_run(
    run: &fleetscore_operator::crd::run::ScoringRun,
    opts: &LocalOptions,
    progress: Progress,
) -> anyhow::Result<bool> {
    let name = run.metadata.name.clone().unwrap_or_default();
    let spec = local::fleet_spec(run, opts)?;
    let total = local::count_sensors(&spec).await;
    let show = match progress {
        Progress::Always => true,
        Progress::Never => false,
        Progress::Auto => std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let bar = if show {
        ProgressBar::new(total.unwrap_or(0) as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} sensors {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(name.clone());
    let failed = std::sync::atomic::AtomicUsize::new(0);
    let (summary, phase) = local::run_local(run, opts, |record| {
        if record.outcome != fleetscore_scorer::output::Outcome::Succeeded {
            let n = failed.fetch_add(1, Ordering::Relaxed) + 1;
            bar.set_message(format!("{n} failed"));
        }
        bar.inc(1);
    })
    .await?;
    bar.finish_and_clear();
    println!("ScoringRun {name}: {}", phase.as_str());
    print!("{}", summary.render());
    let run_dir = fleetscore_operator::run::jobs::join_url(&spec.output, &spec.run_id);
    println!("  output       {run_dir}");
    println!(
        "  report       {}",
        fleetscore_operator::run::jobs::join_url(&run_dir, fleetscore_scorer::report::REPORT_FILE)
    );
    Ok(summary.all_succeeded())
}

/// Scores each manifest document locally; false when any sensor failed.
async fn run_local(args: RunArgs) -> anyhow::Result<bool> {
    if !args.local {
        bail!(
            "only --local is supported by `fleetscore run`; in a cluster, kubectl apply the manifest"
        );
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let opts = LocalOptions {
        threads: args.threads,
        output: args.output.clone(),
    };
    let mut all_ok = true;
    let path = args.file.display().to_string();
    for manifest in local::read_manifests(&args.file)? {
        match manifest {
            Manifest::Run(run) => all_ok &= score_run(&run, &opts, args.progress).await?,
            Manifest::Other { kind, doc } if kind == "ScoringSchedule" => {
                let sched = schedule::local::LocalSchedule::from_yaml(doc, &path)?;
                let clock = schedule::clock::SystemClock;
                all_ok &= schedule::local::run(&sched, &clock, args.keep_running, |run, slot| {
                    let opts = opts.clone();
                    let progress = args.progress;
                    async move {
                        println!(
                            "slot {slot}: ScoringRun {}",
                            run.metadata.name.clone().unwrap_or_default()
                        );
                        score_run(&run, &opts, progress).await
                    }
                })
                .await?;
            }
            Manifest::Other { kind, .. } => {
                bail!(
                    "{path}: kind {kind} cannot run locally (ScoringRun and ScoringSchedule can)"
                );
            }
        }
    }
    Ok(all_ok)
}

/// Sets the schedule's trigger annotation to a new value (the current time), which the schedule
/// controller turns into one run of the current slot.
async fn trigger(args: TriggerArgs) -> anyhow::Result<()> {
    use fleetscore_operator::crd::schedule::{ScoringSchedule, TRIGGER_ANNOTATION};
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let ns = args
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_string());
    let api: kube::Api<ScoringSchedule> = kube::Api::namespaced(client, &ns);
    let value = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let patch = serde_json::json!({ "metadata": { "annotations": { TRIGGER_ANNOTATION: value } } });
    api.patch(
        &args.schedule,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .with_context(|| format!("annotating ScoringSchedule {ns}/{}", args.schedule))?;
    println!(
        "scoringschedule.fleetscore.dev/{} triggered ({TRIGGER_ANNOTATION}={value})",
        args.schedule
    );
    Ok(())
}
