//! Shared by the `api_*` tests: an in-process etcd API server on
//! 127.0.0.1:0 over a `LocalBackend`, stopped by `TestServer::stop`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ha_node::api::{self, ApiConfig, LocalBackend, LocalBackendConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upper bound on any one test's body.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A running server.
pub struct TestServer {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The state underneath (tests peek at it).
    pub backend: Arc<LocalBackend>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), api::ServeError>>,
}

impl TestServer {
    /// Starts a server with default limits (short minimum lease TTL).
    pub async fn start() -> Self {
        Self::start_with(ApiConfig {
            min_lease_ttl_s: 1,
            ..ApiConfig::default()
        })
        .await
    }

    /// Starts a server with `config`.
    pub async fn start_with(config: ApiConfig) -> Self {
        Self::start_with_backend(config, Self::backend_config()).await
    }

    /// The backend settings tests use by default (fast lease clock).
    pub fn backend_config() -> LocalBackendConfig {
        LocalBackendConfig {
            lease_tick_ms: 20,
            lease_checkpoint_interval_ms: 200,
            ..LocalBackendConfig::default()
        }
    }

    /// Starts a server with `config` over a backend built from `backend`.
    pub async fn start_with_backend(config: ApiConfig, backend: LocalBackendConfig) -> Self {
        let backend = Arc::new(LocalBackend::new(backend).expect("local backend"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(api::serve(backend.clone(), config, listener, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            backend,
            stop: Some(stop),
            task,
        }
    }

    /// The endpoint URL for clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connected `etcd-client`.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint()], None)
            .await
            .expect("connect")
    }

    /// Stops the server and waits (bounded) until it has stopped.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let done = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
        match done {
            Ok(Ok(Ok(()))) => {}
            other => panic!("server did not stop cleanly: {other:?}"),
        }
    }
}

/// The gRPC status inside an `etcd-client` error.
pub fn grpc_status(err: etcd_client::Error) -> tonic::Status {
    match err {
        etcd_client::Error::GRpcStatus(s) => s,
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}
