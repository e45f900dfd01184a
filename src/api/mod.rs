//! HTTP API on axum: `GET /metrics` (Prometheus text format), `GET /health`, the
//! contact-centre routes of [`cc`] (queues and agents) and the call control of [`calls`].
//!
//! Everything but `/health` and `/metrics` needs `Authorization: Bearer <token>`: the
//! node's [`Token`] (see [`load_token`]) reaches every route, a tenant's token (see
//! [`crate::store::tokens`], made through [`tokens`]' routes) only its tenant's objects; see
//! [`auth`]. The listener speaks HTTPS when `http.tls_cert` and `http.tls_key` are set
//! ([`tls`]). The metrics recorder is installed by [`crate::metrics::install`]; this module
//! only renders its handle. Every response is counted in [`HTTP_REQUESTS_TOTAL`] by route
//! template, so an unknown path (a scanner) cannot create new series. Errors are RFC 9457
//! problem bodies.
//!
//! Adding a route: register it with [`route`] (not `Router::route`) in [`router`], so that it
//! gets its own `path` label and the tenant guard ([`auth::guard`]): a route is the node's
//! unless [`auth::TENANT_ROUTES`] lists it. A handler that must be the node's whatever the
//! table says calls [`ApiState::authorize`].

pub mod audit;
pub mod auth;
pub mod calls;
pub mod cc;
pub mod cdrs;
mod cluster;
pub mod conferences;
mod config;
pub mod db;
mod health;
pub mod keys;
pub mod log;
pub mod openapi;
mod problem;
pub mod recordings;
mod risk;
mod security;
mod server;
mod status;
pub mod tls;
pub mod tokens;

#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::actors::queue::CcContext;
use crate::store::tokens::TokenTable;
pub use crate::store::tokens::{is_valid_token, MIN_TOKEN_LEN};

pub use auth::{Caller, AUTH_REFUSED_TOTAL};
pub use cc::{Directory, AGENT_COMMANDS_TOTAL};
pub use health::{Health, HealthCheck, HealthReport};
pub use problem::{Problem, PROBLEM_JSON};
pub use server::{ApiServerActor, ApiServerArgs, ApiServerMsg};

/// Counter, labels `path` (route template, or `other`) and `status`: HTTP requests answered.
pub const HTTP_REQUESTS_TOTAL: &str = "switchyard_http_requests_total";

/// Content type of the Prometheus text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `path` label of requests that matched no route.
const OTHER_PATH: &str = "other";

/// Name of the file in the data directory that holds the generated API token.
pub const TOKEN_FILE: &str = "api-token";

/// Describe this module's metrics with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP API requests answered, by route template (`other` if unrouted) and status code"
    );
    audit::describe();
    auth::describe();
    calls::describe();
    cdrs::describe();
    keys::describe();
    cc::describe();
    conferences::describe();
    recordings::describe();
    tls::describe();
    tokens::describe();
    log::describe();
}

/// Shared state of the HTTP handlers; cheap to clone (one per request): handles and `Arc`s.
#[derive(Clone, Debug)]
pub struct ApiState {
    metrics: PrometheusHandle,
    health: Arc<Health>,
    /// The node's token. Without one only tenants' tokens are accepted: the API fails closed.
    token: Option<Token>,
    /// The tenants' tokens (the config file's and the API's; live with [`Self::with_config`]).
    tokens: Arc<TokenTable>,
    /// The listener speaks HTTPS (redirects to other nodes say `https`).
    https: bool,
    /// Without a contact centre the queue and agent routes find nothing (404).
    cc: Option<Arc<cc::ContactCentre>>,
    /// Without recordings the recording routes find nothing (404).
    recordings: Option<Arc<recordings::Recordings>>,
    /// Without cluster membership the cluster routes answer 404.
    cluster: Option<Arc<crate::cluster::membership::Membership>>,
    /// Without live configuration the route and number routes answer 404.
    config: Option<Arc<crate::cluster::shared_config::SharedConfig>>,
    /// Without the edge's tables the ban routes answer 404.
    security: Option<Arc<crate::security::EdgeGuard>>,
    /// The store (CDRs, reports, the audit log). Without it the CDR and report routes
    /// answer 404 and changes are not audited.
    store: Option<Arc<db::Db>>,
    /// Tenants' access keys (signed requests); needs the store.
    keys: Option<Arc<keys::AccessKeys>>,
}

impl ApiState {
    /// State rendering `metrics` on `/metrics` and reporting `health` on `/health`.
    pub fn new(metrics: PrometheusHandle, health: Health) -> Self {
        Self {
            metrics,
            health: Arc::new(health),
            token: None,
            tokens: Arc::new(TokenTable::new()),
            https: false,
            cc: None,
            recordings: None,
            cluster: None,
            config: None,
            security: None,
            store: None,
            keys: None,
        }
    }

    /// Accept requests signed with tenants' access keys, kept in the store (see
    /// [`Self::with_store`]) sealed under `seal` (see [`keys`]).
    pub fn with_access_keys(mut self, seal: keys::SealKey) -> Self {
        self.keys = Some(Arc::new(keys::AccessKeys::new(seal)));
        self
    }

    /// Serve CDRs and reports from `database`, and record every change in its audit log
    /// (see [`audit`]).
    pub fn with_store(mut self, database: crate::store::Database) -> Self {
        self.store = Some(db::Db::new(database));
        self
    }

    /// Accept `token` (as `Authorization: Bearer <token>`) as the node's: every route.
    pub fn with_token(mut self, token: Token) -> Self {
        self.token = Some(token);
        self
    }

    /// Accept `secret` as a token of `tenant` (as a config file's `api_token` is). Call
    /// after [`Self::with_config`], which brings its own table.
    pub fn with_tenant_token(self, tenant: &str, secret: &str) -> Self {
        self.tokens.add_file(tenant, secret);
        self
    }

    /// The listener speaks HTTPS (see [`tls`]).
    pub fn with_https(mut self) -> Self {
        self.https = true;
        self
    }

    /// Serve the queues and agents listed in `directory`, whose actors are found by name
    /// on `cc.node`.
    pub fn with_contact_centre(mut self, cc: Arc<CcContext>, directory: Directory) -> Self {
        self.cc = Some(Arc::new(cc::ContactCentre::new(cc, directory)));
        self
    }

    /// Serve the recording index and audio of `recordings` (see [`recordings`]).
    pub fn with_recordings(mut self, recordings: recordings::Recordings) -> Self {
        self.recordings = Some(Arc::new(recordings));
        self
    }

    /// Serve `GET /cluster` and the drain commands of this node's membership.
    pub fn with_cluster(mut self, membership: Arc<crate::cluster::membership::Membership>) -> Self {
        self.cluster = Some(membership);
        self
    }

    /// Serve `/routes` and `/numbers` from `config` (changes are put in force at once), and
    /// accept the tenants' tokens it keeps.
    pub fn with_config(mut self, config: Arc<crate::cluster::shared_config::SharedConfig>) -> Self {
        self.tokens = config.tokens();
        self.config = Some(config);
        self
    }

    /// Serve `/security/bans` from the edge's tables.
    pub fn with_security(mut self, guard: Arc<crate::security::EdgeGuard>) -> Self {
        self.security = Some(guard);
        self
    }

    /// Who the `Authorization` header speaks for: the node (its token), a tenant (one of
    /// the tenants' tokens), or nobody (401 without a bearer credential, 403 with an unknown
    /// one).
    pub fn identify(&self, headers: &HeaderMap) -> Result<Caller, Denied> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_credential)
            .ok_or(Denied::NoCredentials)?;
        if self.token.as_ref().is_some_and(|t| t.matches(presented)) {
            return Ok(Caller::Node);
        }
        let now = crate::store::now_unix_ms().max(1) as u64;
        match self.tokens.find(presented, now) {
            Some(issued) => Ok(Caller::Tenant {
                tenant: Arc::clone(&issued.tenant),
                token: Arc::clone(&issued.id),
            }),
            None => Err(Denied::WrongToken),
        }
    }

    /// What the audit layer ([`audit::record`]) writes into.
    fn audit_sink(&self) -> audit::AuditSink {
        audit::AuditSink {
            db: self.store.clone(),
            config: self.config.clone(),
        }
    }

    /// `Ok` only for the node's token: for handlers of node-wide things (the [`auth`] guard
    /// already keeps tenants' tokens off every route [`auth::TENANT_ROUTES`] does not list).
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), Denied> {
        match self.identify(headers)? {
            Caller::Node => Ok(()),
            Caller::Tenant { .. } | Caller::Key { .. } => Err(Denied::NodeOnly),
        }
    }
}

/// Why a request was refused before it was looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization: Bearer` credential: 401 with `WWW-Authenticate: Bearer`.
    NoCredentials,
    /// A bearer token the node does not know (wrong, revoked, rotated away): 403.
    WrongToken,
    /// A tenant's token on a route of the node's: 403.
    NodeOnly,
    /// An access key whose role does not reach the route: 403.
    Role,
}

impl Denied {
    /// The `reason` label of [`AUTH_REFUSED_TOTAL`].
    pub fn reason(self) -> &'static str {
        match self {
            Denied::NoCredentials => "missing",
            Denied::WrongToken => "invalid",
            Denied::NodeOnly => "node_only",
            Denied::Role => "role",
        }
    }
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::NoCredentials => {
                let problem = Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "this request needs Authorization: Bearer <token>",
                );
                let challenge = [(header::WWW_AUTHENTICATE, "Bearer")];
                (StatusCode::UNAUTHORIZED, challenge, problem).into_response()
            }
            Denied::WrongToken => {
                Problem::new(StatusCode::FORBIDDEN, "the bearer token is not valid").into_response()
            }
            Denied::NodeOnly => Problem::new(
                StatusCode::FORBIDDEN,
                "this route needs the node's token, not a tenant's",
            )
            .into_response(),
            Denied::Role => Problem::new(
                StatusCode::FORBIDDEN,
                "this access key's role does not reach this route",
            )
            .into_response(),
        }
    }
}

/// The credential of an `Authorization: Bearer <token>` value (the scheme is
/// case-insensitive, RFC 9110 §11.1); `None` for another scheme or an empty credential.
fn bearer_credential(value: &str) -> Option<&str> {
    let (scheme, credential) = value.trim().split_once(' ')?;
    let credential = credential.trim_start();
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty()).then_some(credential)
}

/// The bearer token that authorises API mutations. Its `Debug` form hides it, so it cannot
/// leak into a log through a `{:?}` of the state.
#[derive(Clone)]
pub struct Token {
    secret: Arc<str>,
    /// SHA-256 of the secret: presented tokens are hashed and the digests compared in
    /// constant time, so neither the content nor the length of the secret shows in timing.
    digest: [u8; 32],
}

impl Token {
    /// A token from its text; `None` if it is shorter than [`MIN_TOKEN_LEN`] or not
    /// printable ASCII without spaces (it must fit in an `Authorization` header as typed).
    pub fn new(secret: &str) -> Option<Token> {
        let valid = is_valid_token(secret);
        valid.then(|| Token {
            secret: Arc::from(secret),
            digest: Sha256::digest(secret.as_bytes()).into(),
        })
    }

    /// A fresh random token: 128 bits from the thread's CSPRNG as 32 lowercase hex digits.
    pub fn generate() -> Token {
        let bytes: [u8; 16] = rand::random();
        let mut hex = String::with_capacity(32);
        for b in bytes {
            hex.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            hex.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
        }
        Token::new(&hex).expect("hex digits are a valid token")
    }

    /// The secret itself, to print once for the operator.
    pub fn expose(&self) -> &str {
        &self.secret
    }

    /// Whether `presented` is this token, in time independent of where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let other: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        crate::store::tokens::digests_equal(&self.digest, &other)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Where the node's API token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenOrigin {
    /// `http.token` in the config.
    Config,
    /// `data_dir/api-token`, written at an earlier start.
    File,
    /// Generated now into `data_dir/api-token`: the caller shows it once.
    Generated,
}

/// The API token: `configured` (`http.token`) when set; otherwise the one in
/// `data_dir/api-token`, generated there (mode 0600) if the file does not exist yet.
/// A short (under [`MIN_TOKEN_LEN`] characters) or malformed token is an error rather than
/// a guessable API.
pub fn load_token(configured: Option<&str>, data_dir: &Path) -> io::Result<(Token, TokenOrigin)> {
    let invalid = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{what}: a token is at least {MIN_TOKEN_LEN} characters of printable ASCII without spaces"
            ),
        )
    };
    if let Some(text) = configured {
        let token = Token::new(text).ok_or_else(|| invalid("http.token".into()))?;
        return Ok((token, TokenOrigin::Config));
    }
    let path = data_dir.join(TOKEN_FILE);
    let token = Token::generate();
    let mut options = std::fs::OpenOptions::new();
    // create_new: two nodes sharing a data directory cannot overwrite each other's token.
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => {
            writeln!(file, "{}", token.expose())?;
            file.sync_all()?;
            Ok((token, TokenOrigin::Generated))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(&path)?;
            let token =
                Token::new(text.trim()).ok_or_else(|| invalid(path.display().to_string()))?;
            Ok((token, TokenOrigin::File))
        }
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

/// Bind the API listener (use port 0 in tests and read `local_addr()`).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serve the API on `listener` (a [`TcpListener`], or a [`tls::TlsListener`] for HTTPS)
/// until `shutdown` completes, then finish in-flight requests and return. A failing
/// connection never stops the server; accept errors back off (axum).
pub async fn serve<L>(
    listener: L,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    Peer: for<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    if let Ok(addr) = listener.local_addr() {
        let scheme = if state.https { "https" } else { "http" };
        tracing::info!(%addr, scheme, "HTTP API listening");
    }
    // The client's address reaches the handlers (the audit log records it).
    let app = router(state).into_make_service_with_connect_info::<Peer>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The client's address, in each request's `ConnectInfo<Peer>` (for plain and TLS
/// listeners alike).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tls::TlsListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tls::TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// The API's routes with request counting and problem-body fallbacks.
pub fn router(state: ApiState) -> Router {
    let router = Router::new();
    let router = route(router, "/metrics", get(render_metrics));
    let router = route(router, "/health", get(report_health));
    let router = cc::routes(router);
    let router = calls::routes(router);
    let router = conferences::routes(router);
    let router = recordings::routes(router);
    let router = cluster::routes(router);
    let router = config::routes(router);
    let router = security::routes(router);
    let router = risk::routes(router);
    let router = tokens::routes(router);
    let router = status::routes(router);
    let router = log::routes(router);
    let router = cdrs::routes(router);
    let router = audit::routes(router);
    let router = keys::routes(router);
    let router = openapi::routes(router);
    // Authentication covers the fallbacks too: without a token, an unknown path is a 401
    // like a known one, so the routes cannot be mapped without a token.
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(middleware::from_fn(count_requests))
        .with_state(state)
}

/// Add `method_router` at `path` and label its responses with `path` (the template, e.g.
/// `/tenants/{id}`), which becomes the `path` label of [`HTTP_REQUESTS_TOTAL`]. A method it
/// does not handle gets a 405 problem body. A tenant's token reaches it only if
/// [`auth::TENANT_ROUTES`] lists the method and `path`, and then only its own `{tenant}`
/// ([`auth::guard`]).
///
/// The label travels as a response extension because axum's `matched-path` feature is off.
pub fn route<S>(router: Router<S>, path: &'static str, method_router: MethodRouter<S>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    if let Ok(mut registered) = REGISTERED.lock() {
        registered.insert(path);
    }
    let label = middleware::map_response(move |mut response: Response| async move {
        response.extensions_mut().insert(RouteLabel(path));
        response
    });
    let guard =
        middleware::from_fn(move |request: Request, next: Next| auth::guard(path, request, next));
    // Inside the guard: only requests allowed to reach the handler are recorded.
    let audit =
        middleware::from_fn(move |request: Request, next: Next| audit::record(path, request, next));
    // The 405 fallback is set here, before the layers, so that it is guarded and labelled too.
    router.route(
        path,
        method_router
            .fallback(method_not_allowed)
            .layer(audit)
            .layer(guard)
            .layer(label),
    )
}

/// Every route template registered with [`route`] (what the OpenAPI test walks).
static REGISTERED: std::sync::Mutex<std::collections::BTreeSet<&'static str>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// The route templates registered so far (every one, once [`router`] has run).
pub fn registered_routes() -> Vec<&'static str> {
    REGISTERED
        .lock()
        .map(|r| r.iter().copied().collect())
        .unwrap_or_default()
}

/// The route template a response came from, for the `path` label.
#[derive(Clone, Copy, Debug)]
struct RouteLabel(&'static str);

async fn count_requests(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let path = response
        .extensions()
        .get::<RouteLabel>()
        .map_or(OTHER_PATH, |label| label.0);
    metrics::counter!(
        HTTP_REQUESTS_TOTAL,
        "path" => path,
        "status" => response.status().as_u16().to_string(),
    )
    .increment(1);
    response
}

async fn render_metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        state.metrics.render(),
    )
}

async fn report_health(State(state): State<ApiState>) -> impl IntoResponse {
    let (status, report) = state.health.report();
    (status, Json(report))
}

async fn not_found(method: Method, uri: Uri) -> Problem {
    Problem::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// The query parameters of a listing. Values are taken as they are, without percent
/// decoding: ids and state labels are letters, digits, `-` and `_`, which need none.
#[derive(Debug)]
pub(crate) struct Params<'a>(std::collections::HashMap<&'a str, &'a str>);

impl<'a> Params<'a> {
    /// The parameters of `uri`; an unknown or repeated name is a 400, so a misspelt filter
    /// is not silently ignored.
    pub(crate) fn parse(uri: &'a Uri, known: &[&str]) -> Result<Params<'a>, Problem> {
        let mut params = std::collections::HashMap::new();
        for pair in uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !known.contains(&name) {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {name:?}; known: {}", known.join(", ")),
                ));
            }
            if params.insert(name, value).is_some() {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!("parameter {name:?} is repeated"),
                ));
            }
        }
        Ok(Params(params))
    }

    /// A non-empty value.
    pub(crate) fn get(&self, name: &str) -> Option<&'a str> {
        self.0.get(name).copied().filter(|v| !v.is_empty())
    }

    pub(crate) fn number(&self, name: &str, default: usize) -> Result<usize, Problem> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!("{name} must be a whole number, not {v:?}"),
                )
            }),
        }
    }
}
