//! A per-session counter that stays right whichever worker serves each
//! request: axum + tower-sessions, with the sessions in the cluster's shared
//! store (`forkless-sessions`).
//!
//! ```text
//! cargo run --example axum_sessions -- --port 3000
//! curl -c jar -b jar http://127.0.0.1:3000/    # counter 1 (slot 0)
//! curl -c jar -b jar http://127.0.0.1:3000/    # counter 2 (slot 1)
//! ```

#[path = "support/mod.rs"]
mod support;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use clap::Parser;
use forkless_sessions::ForklessStore;
use tower_sessions::{Expiry, Session, SessionManagerLayer};

/// Sessions shared by every worker.
#[derive(Parser, Debug, Clone)]
struct Args {
    #[command(flatten)]
    listen: support::Listen,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let workers = args.listen.workers;
    support::run("axum-sessions", workers, move |worker| {
        serve(worker, args.clone())
    })
}

async fn count(session: Session, slot: usize) -> Result<String, StatusCode> {
    let seen: u64 = session
        .get("counter")
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
        .unwrap_or(0);
    session
        .insert("counter", seen + 1)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(format!("counter {} slot {slot}\n", seen + 1))
}

async fn serve(worker: forkless::Worker, args: Args) -> Result<(), forkless::Error> {
    let slot = worker.slot();
    // Every worker reaches the same collection: a session started on one
    // worker is found on all.
    let store = ForklessStore::new(worker.store().collection("sessions"))
        .with_idle_expiry(std::time::Duration::from_secs(3600))
        .await?;
    let sessions = SessionManagerLayer::new(store)
        .with_secure(false)
        .with_expiry(Expiry::OnInactivity(time::Duration::hours(1)));
    let app = Router::new()
        .route("/", get(move |session: Session| count(session, slot)))
        .layer(sessions);
    let listener = worker.listen((args.listen.host, args.listen.port)).await?;
    if slot == 0 && worker.generation() == 0 {
        println!("listening on http://{}", listener.local_addr()?);
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(worker.shutdown_signal())
        .await?;
    Ok(())
}
