//! The operations HTTP endpoints: `/shards` (with `--shards` > 1, one line
//! per data shard: its replicas, the leader this member knows of, whether
//! this member hosts and leads it), `/metrics` (Prometheus text format) and
//! `/health` (etcd's shape: `{"health":"true"}` with 200 when the replica
//! runs and a leader is known, `{"health":"false","reason":"..."}` with 503
//! otherwise).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// The router serving `/shards`, `/metrics` and `/health` from `metrics`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    let m1 = Arc::clone(&metrics);
    let m2 = Arc::clone(&metrics);
    let m3 = metrics;
    Router::new()
        .route(
            "/shards",
            get(move || {
                let m = Arc::clone(&m3);
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                        m.shards_text(),
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let m = Arc::clone(&m1);
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route(
            "/health",
            get(move || {
                let m = Arc::clone(&m2);
                async move { health_response(&m) }
            }),
        )
}

fn health_response(m: &Metrics) -> impl IntoResponse + use<> {
    let json = [(header::CONTENT_TYPE, "application/json")];
    match m.healthy() {
        Ok(()) => (StatusCode::OK, json, "{\"health\":\"true\"}".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json,
            format!("{{\"health\":\"false\",\"reason\":\"{reason}\"}}"),
        ),
    }
}

/// Binds `addr` for HTTP; the error names the address and the setting.
pub async fn bind(addr: SocketAddr, setting: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} ({setting}): {e}"))
}

/// Serves `router` on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}
