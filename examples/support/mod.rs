//! What the examples share: logging to stderr with `RUST_LOG`, running the
//! cluster with its report or error printed at the end, and the flags of
//! the axum examples.

use std::future::Future;
use std::process::ExitCode;

/// Sets up logging, runs a cluster named `name` (with `workers`, or one per
/// core) on `body`, prints its report, and says how it went.
#[allow(dead_code)] // not every example uses both
pub(crate) fn run<F, Fut>(name: &str, workers: Option<usize>, body: F) -> ExitCode
where
    F: Fn(forkless::Worker) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), forkless::Error>> + 'static,
{
    run_with(name, workers, |builder| builder, body)
}

/// [`run`], with the builder set up further by `configure`.
pub(crate) fn run_with<F, Fut>(
    name: &str,
    workers: Option<usize>,
    configure: impl FnOnce(forkless::Builder) -> forkless::Builder,
    body: F,
) -> ExitCode
where
    F: Fn(forkless::Worker) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), forkless::Error>> + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_thread_names(true)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut builder = forkless::Cluster::builder().name(name);
    if let Some(workers) = workers {
        builder = builder.workers(workers);
    }
    match configure(builder).run(body) {
        Ok(report) => {
            eprintln!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where an axum example listens, and on how many workers.
#[derive(clap::Args, Debug, Clone)]
#[allow(dead_code)] // not every example uses it
pub(crate) struct Listen {
    /// TCP port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 3000)]
    pub(crate) port: u16,
    /// Number of workers [default: the cores this process may run on].
    #[arg(long)]
    pub(crate) workers: Option<usize>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: std::net::IpAddr,
}
