//! The metrics HTTP endpoint: `GET /metrics` in Prometheus text format, served by axum on its own
//! thread with a current-thread tokio runtime. It reads the cores' `CoreMetrics` only (atomics,
//! mutexes no core holds for long), so a scrape never runs on or waits for a data-path core.

use std::net::SocketAddr;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, TextEncoder};
use tracing::{error, info};

use super::{families, BrokerMetrics};

async fn scrape(metrics: BrokerMetrics) -> impl IntoResponse {
    let encoder = TextEncoder::new();
    let mut buf = Vec::with_capacity(64 << 10);
    match encoder.encode(&families::gather(&metrics), &mut buf) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, encoder.format_type().to_string())], buf),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_string())],
            format!("encoding metrics: {e}\n").into_bytes(),
        ),
    }
}

/// Binds `addr` now (so a bad address fails the start-up) and serves scrapes on a new thread.
pub fn start(addr: &str, metrics: BrokerMetrics) -> anyhow::Result<SocketAddr> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("binding metrics listener {addr}: {e}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new().name("sluice-metrics".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_io().build() {
            Ok(rt) => rt,
            Err(e) => {
                error!(error = %e, "metrics: cannot start the runtime");
                return;
            }
        };
        rt.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    error!(error = %e, "metrics: cannot use the listener");
                    return;
                }
            };
            let app = Router::new().route("/metrics", get(move || scrape(metrics.clone())));
            if let Err(e) = axum::serve(listener, app).await {
                error!(error = %e, "metrics endpoint stopped");
            }
        });
    })?;
    info!(%local, "metrics on http://{local}/metrics");
    Ok(local)
}
