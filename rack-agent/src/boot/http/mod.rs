//! Boot service: the HTTP(S) boot server — per-node iPXE scripts (`/ipxe/`), boot assets
//! (`/assets/`), the node API of the microkernel's node-agent (`/node/v1/`), `/metrics` and
//! `/healthz`.
//!
//! Listener → handler → backend: [`HttpServer::run`] accepts connections and hands requests to
//! an axum router; the handlers are thin shells over pure decisions ([`ipxe::render`],
//! [`node_api::checkin`], [`autoinstall::render_source`], [`assets::parse_range`]) that look
//! nodes up through [`BootBackend`]. A malformed request is answered with a JSON error, counted
//! by reason and logged with the peer; it never stops the server.

pub mod assets;
pub mod autoinstall;
pub mod config;
pub mod ipxe;
pub mod node_api;
pub mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use protocol::domain::BootTarget;
use protocol::error::{ErrorBody, ErrorCode};
use protocol::fleet::EventKind;
use protocol::Mac;

use super::{
    BootBackend, BootDeps, EventSink, MetricsRegistry, ASSETS_PREFIX, IPXE_SCRIPT_PREFIX,
    NODE_API_PREFIX,
};
use assets::{error_chain, AssetError, AssetStore};
use autoinstall::{TemplateError, Templates};
pub use config::{HttpConfig, UnknownMacs};
use ipxe::ScriptPolicy;
pub use node_api::{ActionError, ActionResult, ActionTarget, NodeAction, NodeActions};
use stats::HttpStats;

/// How long in-flight requests may run on after cancellation before they are cut.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A TLS client that has not finished its handshake by then is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect timeout for remote asset downloads.
pub const DOWNLOAD_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The HTTP listen address cannot be bound (in use, not local, no permission).
    #[error("binding HTTP listener on {addr}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTPS listen address cannot be bound.
    #[error("binding HTTPS listener on {addr}")]
    BindHttps {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A TLS certificate or key file cannot be read.
    #[error("reading TLS file {path}")]
    TlsFile {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The certificate and key do not make a TLS server configuration.
    #[error("TLS configuration from {cert} and {key}")]
    Tls {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// Cause.
        #[source]
        source: pki::PkiError,
    },
    /// A directory of the server cannot be created.
    #[error("creating directory {path}")]
    Dir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The CA bundle for remote assets is unreadable or not PEM.
    #[error("loading CA bundle {path}")]
    CaBundle {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The download client could not be built.
    #[error("building the remote asset client")]
    Client {
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
}

/// Per-connection facts the handlers need (for the base URL handed to clients).
#[derive(Debug, Clone, Copy)]
struct ConnInfo {
    scheme: &'static str,
    local: SocketAddr,
    peer: SocketAddr,
}

/// What the handlers share.
struct AppState {
    backend: Arc<dyn BootBackend>,
    events: Arc<dyn EventSink>,
    metrics: MetricsRegistry,
    stats: Arc<HttpStats>,
    assets: AssetStore,
    templates: Templates,
    actions: NodeActions,
    discovery: config::DiscoveryConfig,
    unknown_macs: UnknownMacs,
    long_poll_max: Duration,
    shutdown: CancellationToken,
}

/// A bound HTTP(S) boot server.
pub struct HttpServer {
    http: TcpListener,
    addr: SocketAddr,
    https: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    https_addr: Option<SocketAddr>,
    router: Router,
    state: Arc<AppState>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.addr)
            .field("https_addr", &self.https_addr)
            .finish_non_exhaustive()
    }
}

async fn create_dir(path: &std::path::Path) -> Result<(), HttpError> {
    tokio::fs::create_dir_all(path)
        .await
        .map_err(|source| HttpError::Dir {
            path: path.to_owned(),
            source,
        })
}

/// Removes downloads left half-written by a crash (`.<sha>.<rand>.part`).
async fn remove_partial_downloads(dir: &std::path::Path) {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    while let Ok(Some(e)) = entries.next_entry().await {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".part") {
            let _ = tokio::fs::remove_file(e.path()).await;
        }
    }
}

impl HttpServer {
    /// Binds the HTTP (and HTTPS) listeners, loads the TLS files, prepares the directories and
    /// registers the server's counters in `deps.metrics`.
    pub async fn bind(config: &HttpConfig, deps: &BootDeps) -> Result<HttpServer, HttpError> {
        let http = TcpListener::bind(config.listen)
            .await
            .map_err(|source| HttpError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = http.local_addr().map_err(|source| HttpError::Bind {
            addr: config.listen,
            source,
        })?;
        let https = match &config.https {
            None => None,
            Some(h) => {
                let read = |path: PathBuf| async move {
                    tokio::fs::read_to_string(&path)
                        .await
                        .map_err(|source| HttpError::TlsFile { path, source })
                };
                let leaf = pki::CertKeyPem {
                    cert_pem: read(h.cert.clone()).await?,
                    key_pem: read(h.key.clone()).await?,
                };
                let tls = pki::https_server_config(&leaf).map_err(|source| HttpError::Tls {
                    cert: h.cert.clone(),
                    key: h.key.clone(),
                    source,
                })?;
                let listener =
                    TcpListener::bind(h.listen)
                        .await
                        .map_err(|source| HttpError::BindHttps {
                            addr: h.listen,
                            source,
                        })?;
                Some((listener, tokio_rustls::TlsAcceptor::from(Arc::new(tls))))
            }
        };
        let https_addr = match &https {
            Some((l, _)) => Some(l.local_addr().map_err(|source| HttpError::BindHttps {
                addr: l.local_addr().unwrap_or(addr),
                source,
            })?),
            None => None,
        };

        create_dir(&config.assets_dir).await?;
        create_dir(&config.templates_dir).await?;
        let sha_dir = config.cache_dir.join("sha256");
        create_dir(&sha_dir).await?;
        remove_partial_downloads(&sha_dir).await;

        let mut client = reqwest::Client::builder().connect_timeout(DOWNLOAD_CONNECT_TIMEOUT);
        match tokio::fs::read(&config.ca_bundle).await {
            Ok(pem) => {
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                    HttpError::CaBundle {
                        path: config.ca_bundle.clone(),
                        source,
                    }
                })?;
                for c in certs {
                    client = client.add_root_certificate(c);
                }
            }
            Err(e) => tracing::info!(
                path = %config.ca_bundle.display(), error = %e,
                "no CA bundle: https:// remote assets cannot be verified and will fail"
            ),
        }
        let client = client
            .build()
            .map_err(|source| HttpError::Client { source })?;

        let stats = Arc::new(HttpStats::default());
        deps.metrics.register(stats.clone());
        let state = Arc::new(AppState {
            backend: deps.backend.clone(),
            events: deps.events.clone(),
            metrics: deps.metrics.clone(),
            stats: stats.clone(),
            assets: AssetStore::new(
                config.assets_dir.clone(),
                config.cache_dir.clone(),
                deps.ipxe_dir.clone(),
                &config.assets,
                client,
                Duration::from_secs(config.download_timeout_secs),
                stats,
            ),
            templates: Templates::new(config.templates_dir.clone()),
            actions: NodeActions::default(),
            discovery: config.discovery.clone(),
            unknown_macs: config.unknown_macs,
            long_poll_max: Duration::from_secs(config.long_poll_max_secs),
            shutdown: CancellationToken::new(),
        });
        let router = router(state.clone(), config.max_body_bytes);
        Ok(HttpServer {
            http,
            addr,
            https,
            https_addr,
            router,
            state,
        })
    }

    /// The bound HTTP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound HTTPS address, when HTTPS is configured.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// The action queue of the node API, for the executor to push actions and read results.
    pub fn node_actions(&self) -> NodeActions {
        self.state.actions.clone()
    }

    /// The server's counters.
    pub fn stats(&self) -> Arc<HttpStats> {
        self.state.stats.clone()
    }

    /// Serves until `cancel` fires; then stops accepting, ends long polls, lets in-flight
    /// responses finish for up to [`SHUTDOWN_GRACE`] and cuts the rest.
    pub async fn run(self, cancel: CancellationToken) {
        let HttpServer {
            http,
            https,
            router,
            state,
            ..
        } = self;
        let shutdown = state.shutdown.clone();
        let link = async {
            cancel.cancelled().await;
            shutdown.cancel();
        };
        let plain = serve_listener(http, None, router.clone(), state.clone());
        let secure = async {
            if let Some((listener, acceptor)) = https {
                serve_listener(listener, Some(acceptor), router.clone(), state.clone()).await;
            }
        };
        tokio::join!(link, plain, secure);
    }
}

/// Accept loop of one listener; every connection is a tracked task, drained on shutdown.
async fn serve_listener(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    state: Arc<AppState>,
) {
    let shutdown = state.shutdown.clone();
    let fallback_local = listener.local_addr().ok();
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        HttpStats::add(&state.stats.connections, 1);
        let _ = tcp.set_nodelay(true);
        let Some(local) = tcp.local_addr().ok().or(fallback_local) else {
            continue;
        };
        let router = router.clone();
        let shutdown = shutdown.clone();
        match tls.clone() {
            None => {
                let info = ConnInfo {
                    scheme: "http",
                    local,
                    peer,
                };
                conns.spawn(serve_io(tcp, info, router, shutdown));
            }
            Some(acceptor) => {
                let stats = state.stats.clone();
                conns.spawn(async move {
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                    let stream = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        r = handshake => match r {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                HttpStats::add(&stats.tls_failures, 1);
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                HttpStats::add(&stats.tls_failures, 1);
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        },
                    };
                    let info = ConnInfo {
                        scheme: "https",
                        local,
                        peer,
                    };
                    serve_io(stream, info, router, shutdown).await;
                });
            }
        }
    }
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!(
            left = conns.len(),
            "HTTP connections still busy after the shutdown grace period; cutting them"
        );
        conns.shutdown().await;
    }
}

/// Serves one connection (HTTP/1.1 or HTTP/2); on shutdown, finishes the requests in flight.
async fn serve_io<I>(io: I, info: ConnInfo, router: Router, shutdown: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = router.map_request(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(info);
        req
    });
    let svc = hyper_util::service::TowerToHyperService::new(svc);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(peer = %info.peer, error = %e, "HTTP connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    let node = |p: &str| format!("{NODE_API_PREFIX}{p}");
    Router::new()
        .route(&format!("{IPXE_SCRIPT_PREFIX}boot.ipxe"), get(ipxe_query))
        .route(&format!("{IPXE_SCRIPT_PREFIX}{{mac}}"), get(ipxe_path))
        .route(&format!("{ASSETS_PREFIX}{{*path}}"), get(asset))
        .route(&node("checkin"), post(checkin))
        .route(&node("next"), get(next))
        .route(&node("logs"), post(logs))
        .route(&node("results"), post(results))
        .route(&node("autoinstall/{mac}"), get(autoinstall))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(not_found)
        // Bodies are read whole (JSON); beyond this the Bytes extractor refuses with 413.
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

async fn count_requests(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = stats::route_of(req.uri().path());
    let resp = next.run(req).await;
    st.stats.request(route, resp.status().as_u16());
    resp
}

/// A JSON error answer.
fn json_error(status: StatusCode, body: ErrorBody) -> Response {
    (status, Json(body)).into_response()
}

fn status_of(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Refuses a request: counted by `reason`, logged at debug with the peer, answered in JSON.
fn refuse(st: &AppState, info: &ConnInfo, reason: &'static str, body: ErrorBody) -> Response {
    st.stats.rejected(reason);
    tracing::debug!(peer = %info.peer, reason, error = %body, "HTTP request refused");
    json_error(status_of(body.code), body)
}

fn parse_mac(s: &str, field: &str) -> Result<Mac, ErrorBody> {
    s.parse::<Mac>()
        .map_err(|e| ErrorBody::new(ErrorCode::InvalidField, e.to_string()).with_field(field))
}

/// The base URL (`scheme://host:port`) a client used to reach us: the request's authority
/// (HTTP/2) or `Host` header when it is a plain host name or address, with the connection's
/// port added when it names none; otherwise the connection's local address. Pure.
pub fn base_url(scheme: &str, authority: Option<&str>, local: SocketAddr) -> String {
    let valid_host = |h: &str| {
        if let Some(inner) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            inner.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }
    };
    if let Some(a) = authority.map(str::trim) {
        // Split off a port: the last ':' after any IPv6 bracket.
        let (host, port) = match a.rfind(':') {
            Some(i) if !a.get(i..).unwrap_or("").contains(']') => {
                (a.get(..i).unwrap_or(""), Some(a.get(i + 1..).unwrap_or("")))
            }
            _ => (a, None),
        };
        let port = match port {
            None => Some(local.port()),
            Some(p) => p.parse::<u16>().ok(),
        };
        if let Some(port) = port {
            if valid_host(host) {
                return format!("{scheme}://{host}:{port}");
            }
        }
    }
    match local {
        SocketAddr::V4(a) => format!("{scheme}://{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("{scheme}://[{}]:{}", a.ip(), a.port()),
    }
}

fn request_base_url(info: &ConnInfo, headers: &HeaderMap, uri: &axum::http::Uri) -> String {
    let authority = uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    });
    base_url(info.scheme, authority.as_deref(), info.local)
}

#[derive(Debug, serde::Deserialize)]
struct MacQuery {
    mac: Option<String>,
}

async fn ipxe_query(
    State(st): State<Arc<AppState>>,
    Extension(info): Extension<ConnInfo>,
    query: Result<Query<MacQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let mac = match query.map(|q| q.0.mac) {
        Ok(Some(m)) => m,
        _ => {
            return refuse(
                &st,
                &info,
                "bad_mac",
                ErrorBody::new(ErrorCode::InvalidField, "expected ?mac=<mac>").with_field("mac"),
            )
        }
    };
    script(&st, &info, &mac, &headers, &uri)
}

async fn ipxe_path(
    State(st): State<Arc<AppState>>,
    Extension(info): Extension<ConnInfo>,
    mac: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    match mac {
        Ok(Path(mac)) => script(&st, &info, &mac, &headers, &uri),
        Err(e) => bad_path(&st, &info, e),
    }
}

/// A path that does not decode (bad percent-encoding, not UTF-8).
fn bad_path(st: &AppState, info: &ConnInfo, e: PathRejection) -> Response {
    refuse(
        st,
        info,
        "bad_path",
        ErrorBody::new(ErrorCode::BadRequest, e.body_text()),
    )
}

fn script(
    st: &AppState,
    info: &ConnInfo,
    mac: &str,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
) -> Response {
    let mac = match parse_mac(mac, "mac") {
        Ok(m) => m,
        Err(e) => return refuse(st, info, "bad_mac", e),
    };
    let node = st.backend.node_by_mac(&mac);
    let base = request_base_url(info, headers, uri);
    let policy = ScriptPolicy {
        unknown_macs: st.unknown_macs,
        discovery: &st.discovery,
    };
    let s = ipxe::render_script(node.as_ref(), &mac, &base, &policy);
    st.stats.script(s.kind);
    HttpStats::add(&st.stats.bytes_sent, s.text.len() as u64);
    tracing::debug!(peer = %info.peer, %mac, detail = %s.detail, "iPXE script served");
    st.events.emit(vec![EventKind::Boot {
        mac,
        node: node.map(|n| n.id),
        detail: s.detail,
    }]);
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        s.text,
    )
        .into_response()
}

async fn asset(
    State(st): State<Arc<AppState>>,
    Extension(info): Extension<ConnInfo>,
    path: Result<Path<String>, PathRejection>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let path = match path {
        Ok(Path(p)) => p,
        Err(e) => return bad_path(&st, &info, e),
    };
    let result = match st.assets.resolve(&path).await {
        Ok(r) => assets::serve_file(&r, &method, &headers, st.stats.clone()).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(resp) => resp,
        Err(e) => {
            let status = e.status();
            st.stats.rejected(e.reason());
            let message = error_chain(&e);
            match &e {
                AssetError::NotFound { .. } | AssetError::Forbidden { .. } => {
                    tracing::debug!(peer = %info.peer, error = %message, "asset refused")
                }
                _ => tracing::warn!(peer = %info.peer, error = %message, "asset failed"),
            }
            let code = match status {
                StatusCode::NOT_FOUND => ErrorCode::NotFound,
                StatusCode::FORBIDDEN => ErrorCode::Forbidden,
                StatusCode::GATEWAY_TIMEOUT => ErrorCode::Timeout,
                StatusCode::BAD_GATEWAY => ErrorCode::Unavailable,
                _ => ErrorCode::Internal,
            };
            json_error(status, ErrorBody::new(code, message))
        }
    }
}

/// The body of a node API request, parsed; or the error answer.
fn body_json<T: serde::de::DeserializeOwned>(
    st: &AppState,
    info: &ConnInfo,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Box<Response>> {
    let bytes = match body {
        Ok(b) => b,
        Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(Box::new(refuse(
                st,
                info,
                "body_too_large",
                ErrorBody::new(ErrorCode::PayloadTooLarge, rej.body_text()),
            )))
        }
        Err(rej) => {
            return Err(Box::new(refuse(
                st,
                info,
                "body_unreadable",
                ErrorBody::new(ErrorCode::BadRequest, rej.body_text()),
            )))
        }
    };
    node_api::parse_json(&bytes).map_err(|e| Box::new(refuse(st, info, "bad_json", e)))
}

async fn checkin(
    State(st): State<Arc<AppState>>,
    Extension(info): Extension<ConnInfo>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req: node_api::CheckinRequest = match body_json(&st, &info, body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let serial = req.serial.clone();
    let (event, answer) = node_api::checkin(st.backend.as_ref(), req);
    tracing::info!(peer = %info.peer, %serial, node = ?answer.node, "node checked in");
    st.events.emit(vec![event]);
    Json(answer).into_response()
}

async fn next(
    State(st): State<Arc<AppState>>,
    Extension(info): Extension<ConnInfo>,
    query: Result<Query<node_api::NextQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => {
            return refuse(
                &st,
                &info,
                "bad_query",
                ErrorBody::new(ErrorCode::BadRequest, e.body_text()),
            )
        }
    };
    let mac = match parse_mac(&q.mac, "mac") {
        Ok(m) => m,
        Err(e) => return refuse(&st, &info, "bad_mac", e),
    };
    let wait = Duration::from_secs(q.wait.unwrap_or(0)).min(st.long_poll_max);
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribed before the first look, so a push between look and wait still wakes us.
    let mut changed = st.actions.subscribe();
    loop {
        // Looked up on every round: the node may be registered while its machine waits.
        let node = st.backend.node_by_mac(&mac).map(|n| n.id);
        if let Some(action) = st.actions.next_for(&mac, node) {
            tracing::debug!(peer = %info.peer, %mac, action = action.id(), "action delivered");
            return Json(action).into_response();
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = st.shutdown.cancelled() => break,
            r = changed.changed() => if r.is_err() { break },
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn logs(
    State(st): State<Arc<AppState>>,
    Extension(info): Extension<ConnInfo>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req: node_api::LogsRequest = match body_json(&st, &info, body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    match node_api::logs(st.backend.as_ref(), req) {
        Ok(events) => {
            let n = events.len();
            st.events.emit(events);
            Json(serde_json::json!({ "accepted": n })).into_response()
        }
        Err(e) => refuse(&st, &info, "unknown_mac", e),
    }
}

async fn results(
    State(st): State<Arc<AppState>>,
    Extension(info): Extension<ConnInfo>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req: ActionResult = match body_json(&st, &info, body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let node = st.backend.node_by_mac(&req.mac).map(|n| n.id);
    let (action, code) = (req.action.clone(), req.exit_code);
    match st.actions.complete(node, req) {
        Ok(()) => {
            if let Some(node) = node {
                st.events.emit(vec![EventKind::Log {
                    node,
                    message: format!("[{action}] finished with exit code {code}"),
                }]);
            }
            Json(serde_json::json!({ "recorded": true })).into_response()
        }
        Err(e) => {
            let code = match e {
                ActionError::Unknown { .. } => ErrorCode::NotFound,
                _ => ErrorCode::Conflict,
            };
            refuse(
                &st,
                &info,
                "bad_result",
                ErrorBody::new(code, e.to_string()).with_field("action"),
            )
        }
    }
}

async fn autoinstall(
    State(st): State<Arc<AppState>>,
    Extension(info): Extension<ConnInfo>,
    mac: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let mac = match mac {
        Ok(Path(m)) => m,
        Err(e) => return bad_path(&st, &info, e),
    };
    let mac = match parse_mac(&mac, "mac") {
        Ok(m) => m,
        Err(e) => return refuse(&st, &info, "bad_mac", e),
    };
    let Some(node) = st.backend.node_by_mac(&mac) else {
        return refuse(
            &st,
            &info,
            "unknown_mac",
            ErrorBody::new(
                ErrorCode::NotFound,
                format!("no node of this rack has MAC {mac}"),
            ),
        );
    };
    let name = match &node.boot_target {
        BootTarget::Install {
            autoinstall: Some(name),
            ..
        } => name.clone(),
        _ => {
            return refuse(
                &st,
                &info,
                "no_autoinstall",
                ErrorBody::new(
                    ErrorCode::NotFound,
                    format!(
                        "node {} does not boot an installer with an autoinstall template",
                        node.id
                    ),
                ),
            )
        }
    };
    let base = request_base_url(&info, &headers, &uri);
    let ctx = autoinstall::node_context(&node, &mac, &base);
    match st.templates.render(&name, &ctx).await {
        Ok(text) => {
            HttpStats::add(&st.stats.bytes_sent, text.len() as u64);
            (
                [
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                text,
            )
                .into_response()
        }
        Err(e) => {
            let message = error_chain(&e);
            tracing::warn!(node = %node.id, %mac, template = %name, error = %message, "autoinstall template failed");
            st.stats.rejected("template_error");
            let (status, code, line) = match &e {
                TemplateError::NotFound { .. } => {
                    (StatusCode::NOT_FOUND, ErrorCode::NotFound, None)
                }
                TemplateError::Render { line, .. } => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    *line,
                ),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, None),
            };
            // ErrorBody plus where: clients that only know ErrorBody ignore the extra keys.
            (
                status,
                Json(serde_json::json!({
                    "code": code,
                    "message": message,
                    "template": name,
                    "line": line,
                })),
            )
                .into_response()
        }
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

async fn not_found(
    State(st): State<Arc<AppState>>,
    Extension(info): Extension<ConnInfo>,
    uri: axum::http::Uri,
) -> Response {
    refuse(
        &st,
        &info,
        "no_route",
        ErrorBody::new(ErrorCode::NotFound, format!("no route for {}", uri.path())),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let local: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        assert_eq!(
            base_url("http", Some("boot.example:8080"), local),
            "http://boot.example:8080"
        );
        assert_eq!(
            base_url("http", Some("10.0.0.1"), local),
            "http://10.0.0.1:8080"
        );
        assert_eq!(
            base_url("https", Some("[fd00::1]:8443"), local),
            "https://[fd00::1]:8443"
        );
        assert_eq!(
            base_url("http", Some("[fd00::1]"), local),
            "http://[fd00::1]:8080"
        );
        // Junk falls back to the connection's address.
        for bad in ["a b", "x:notaport", "evil\"host", ""] {
            assert_eq!(base_url("http", Some(bad), local), "http://10.0.0.1:8080");
        }
        assert_eq!(base_url("http", None, local), "http://10.0.0.1:8080");
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(base_url("http", None, v6), "http://[::1]:80");
    }
}
