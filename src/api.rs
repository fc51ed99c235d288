//! The control API (SPEC §6): HTTP + JSON on loopback, every route in this
//! file. The CLI, scripts and (later) the dashboard talk to the node here.
//!
//! Every error is `{"error": "<human sentence>", "code": "<snake_case>"}` with
//! a 4xx/5xx status, and every rejected input is logged. Bad input never
//! touches the node's state.

use crate::actors::cluster_bus::{ClusterStatus, ListMembers, MemberStatus};
use crate::actors::transponder::{PublishToCluster, RequestCluster};
use crate::actors::ModuleState;
use crate::deploy::origin::{self, DeployRequest, OriginError};
use crate::monitor::answer::{Isolation, StatusAnswer};
use crate::monitor::board::{summarize, NodeView};
use crate::node::NodeHandle;
use crate::wire::{Envelope, MessageType, Target};
use actix_web::dev::Service;
use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, ResponseError};
use bytes::Bytes;
use futures_util::future::Either;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_stream::wrappers::BroadcastStream;
use tracing::{debug, warn, Instrument};

/// The default and the largest timeout of `POST /v1/request`.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 5_000;
pub const MAX_REQUEST_TIMEOUT_MS: u64 = 600_000;

/// An API error in the SPEC §6 format.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(json!({"error": self.message, "code": self.code}))
    }
}

/// Starts the control API on `addr`; answers the server handle and the
/// address it actually bound (for port 0).
pub fn serve(
    node: NodeHandle,
    addr: SocketAddr,
    max_body: usize,
    token: String,
) -> std::io::Result<(actix_web::dev::ServerHandle, SocketAddr)> {
    let token = std::sync::Arc::new(token);
    // Names the API answers to besides IP addresses (see `check_browser_guard`).
    let mut names = vec!["localhost".to_string()];
    if let Some(host) = crate::node::system_hostname() {
        names.push(host.split('.').next().unwrap_or(&host).to_string());
        names.push(host);
    }
    let names = std::sync::Arc::new(names);
    let server = HttpServer::new(move || {
        let names = names.clone();
        let token = token.clone();
        // Every log line of a request (rejections included) names the node
        // and `module=api`.
        let span = node.ctx.identity.span("api");
        App::new()
            // Run last to first: the span, the browser guard, then the token.
            .wrap_fn(move |req, srv| match check_token(req.request(), &token) {
                Ok(()) => Either::Left(srv.call(req)),
                Err(e) => {
                    warn!(method = %req.method(), path = %req.path(), error = %e, "refused a request without the API token");
                    Either::Right(futures_util::future::ready(Err(e.into())))
                }
            })
            .wrap_fn(move |req, srv| match check_browser_guard(req.request(), &names) {
                Ok(()) => Either::Left(srv.call(req)),
                Err(e) => {
                    warn!(path = %req.path(), host = ?req.headers().get("host"),
                        origin = ?req.headers().get("origin"), error = %e, "refused a request from a web page");
                    Either::Right(futures_util::future::ready(Err(e.into())))
                }
            })
            .wrap_fn(move |req, srv| srv.call(req).instrument(span.clone()))
            .app_data(web::Data::new(node.clone()))
            .app_data(json_config(max_body))
            .app_data(web::PayloadConfig::new(max_body))
            .app_data(web::QueryConfig::default().error_handler(query_error))
            .route("/v1/health", web::get().to(health))
            .route("/v1/members", web::get().to(members))
            .route("/v1/publish", web::post().to(publish))
            .route("/v1/request", web::post().to(request))
            .route("/v1/events", web::get().to(events))
            .route("/v1/packages", web::post().to(upload_package))
            .route("/v1/deploy", web::post().to(deploy))
            .route("/v1/undeploy", web::post().to(undeploy))
            .route("/v1/modules", web::get().to(modules))
            .route("/v1/status", web::get().to(status))
            .route("/metrics", web::get().to(metrics))
            .route("/", web::get().to(dashboard))
            .route("/v1/debug/state", web::get().to(debug_state))
            .default_service(web::to(not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2)
    .bind(addr)?;
    let bound = server.addrs().first().copied().unwrap_or(addr);
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok((handle, bound))
}

/// Keeps web pages from driving the API through a browser. The API can
/// deploy code to the whole fleet, and it takes JSON without a JSON content
/// type (for curl), so a page elsewhere must not be able to post to it:
/// - a request carrying an `Origin` must come from the API's own origin
///   (browsers send it on cross-site posts; the CLI and curl never do);
/// - the `Host` must be an IP address, `localhost` or this host's own name
///   (`names`), so a page cannot rebind its own domain name to 127.0.0.1
///   and pass as same-origin.
fn check_browser_guard(req: &HttpRequest, names: &[String]) -> Result<(), ApiError> {
    let header = |name: &str| req.headers().get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let host = header("host");
    if let Some(host) = host {
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => host.rsplit_once(':').map_or(host, |(name, _)| name),
        };
        let allowed = name.parse::<std::net::IpAddr>().is_ok() || names.iter().any(|n| n.eq_ignore_ascii_case(name));
        if !allowed {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_host",
                format!(
                    "the control API answers only requests addressed to an IP address, localhost or this host's \
                     name, not `{host}` (this keeps web pages from reaching it through DNS rebinding)"
                ),
            ));
        }
    }
    if let Some(origin) = header("origin") {
        let authority = origin.split_once("://").map(|(_, rest)| rest.trim_end_matches('/'));
        if authority.is_none() || authority != host {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                format!("the control API refuses requests from other web origins (`{origin}`)"),
            ));
        }
    }
    Ok(())
}

/// Every route that changes anything (any method but GET and HEAD) needs
/// the node's token (see `api_token`).
fn check_token(req: &HttpRequest, token: &str) -> Result<(), ApiError> {
    if matches!(
        *req.method(),
        actix_web::http::Method::GET | actix_web::http::Method::HEAD
    ) {
        return Ok(());
    }
    let header = req.headers().get("authorization").and_then(|v| v.to_str().ok());
    if crate::api_token::authorized(token, header) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        format!(
            "this route needs the node's API token (`Authorization: Bearer …`, from `<data-dir>/{}`, \
             readable by the node's user)",
            crate::api_token::API_TOKEN_FILE
        ),
    ))
}

fn json_config(max_body: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(max_body)
        .content_type_required(false)
        .error_handler(move |err, req| {
            let api = match &err {
                JsonPayloadError::Overflow { limit } | JsonPayloadError::OverflowKnownLength { limit, .. } => {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        format!("request body is larger than the limit of {limit} bytes"),
                    )
                }
                JsonPayloadError::Deserialize(e) if e.is_data() => ApiError::bad_request(
                    "invalid_request",
                    format!("request body is not what this route takes: {e}"),
                ),
                JsonPayloadError::Deserialize(e) => {
                    ApiError::bad_request("malformed_json", format!("request body is not valid JSON: {e}"))
                }
                JsonPayloadError::ContentType => ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "request body must be JSON (Content-Type: application/json)",
                ),
                other => ApiError::bad_request("bad_request", format!("cannot read the request body: {other}")),
            };
            warn!(method = %req.method(), path = %req.path(), code = api.code, error = %api.message,
                "rejected API request");
            api.into()
        })
}

fn query_error(err: QueryPayloadError, req: &HttpRequest) -> actix_web::Error {
    let api = ApiError::bad_request("invalid_query", format!("bad query string: {err}"));
    warn!(path = %req.path(), error = %api.message, "rejected API request");
    api.into()
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {} {}", req.method(), req.path()),
    ))
}

fn parse_target(target: Option<&str>) -> Result<Option<Target>, ApiError> {
    target
        .map(|t| {
            Target::parse(t).map_err(|e| {
                warn!(error = %e, "rejected API request with a bad selector");
                ApiError::bad_request("bad_selector", e.to_string())
            })
        })
        .transpose()
}

fn check_address(address: &str) -> Result<(), ApiError> {
    if address.trim().is_empty() {
        warn!("rejected API request with an empty address");
        return Err(ApiError::bad_request("invalid_request", "`address` must not be empty"));
    }
    Ok(())
}

fn transponder(node: &NodeHandle) -> Result<actix::Addr<crate::actors::Transponder>, ApiError> {
    node.transponder()
        .ok_or_else(|| ApiError::unavailable("the transponder is restarting; try again in a moment"))
}

async fn list_members(node: &NodeHandle) -> Result<Vec<crate::actors::Member>, ApiError> {
    node.ctx
        .cluster
        .members
        .send(ListMembers)
        .await
        .map_err(|_| ApiError::unavailable("the cluster bus is not running"))
}

async fn health(node: web::Data<NodeHandle>) -> Result<HttpResponse, ApiError> {
    if let Some(fault) = node.core_fault().await {
        warn!(error = %fault, "health check: the node is broken");
        return Err(ApiError::unavailable(format!("this node is broken: {fault}")));
    }
    let members = list_members(&node).await?;
    let alive = members.iter().filter(|m| m.status == MemberStatus::Alive).count();
    Ok(HttpResponse::Ok().json(json!({
        "node": node.ctx.identity.name,
        "cluster": node.ctx.identity.cluster,
        "status": "ok",
        "members_alive": alive,
        "uptime_ms": node.ctx.started.elapsed().as_millis() as u64,
        "version": env!("CARGO_PKG_VERSION"),
    })))
}

#[derive(Deserialize)]
struct MembersQuery {
    status: Option<String>,
    target: Option<String>,
}

async fn members(node: web::Data<NodeHandle>, query: web::Query<MembersQuery>) -> Result<HttpResponse, ApiError> {
    let status = match query.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(MemberStatus::parse(s).ok_or_else(|| {
            warn!(status = s, "rejected API request with a bad status filter");
            ApiError::bad_request(
                "bad_status",
                format!("unknown status `{s}`: use alive, suspect, dead or left"),
            )
        })?),
    };
    let target = parse_target(query.target.as_deref().filter(|s| !s.is_empty()))?;
    let members = list_members(&node).await?;
    let members: Vec<_> = members
        .into_iter()
        .filter(|m| status.is_none_or(|s| m.status == s))
        .filter(|m| target.as_ref().is_none_or(|t| t.matches(&m.name, &m.tags)))
        .collect();
    Ok(HttpResponse::Ok().json(members))
}

#[derive(Deserialize)]
struct PublishBody {
    address: String,
    body: Value,
    target: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

async fn publish(node: web::Data<NodeHandle>, req: web::Json<PublishBody>) -> Result<HttpResponse, ApiError> {
    let req = req.into_inner();
    check_address(&req.address)?;
    parse_target(req.target.as_deref())?;
    let kind = match req.kind.as_deref() {
        None => MessageType::Event,
        Some(k) => {
            MessageType::parse(k).ok_or_else(|| ApiError::bad_request("invalid_request", "`type` must not be empty"))?
        }
    };
    let id = transponder(&node)?
        .send(PublishToCluster {
            kind,
            module: "api".into(),
            address: req.address,
            target: req.target,
            body: req.body,
        })
        .await
        .map_err(|_| ApiError::unavailable("the transponder stopped while publishing"))?
        .map_err(|e| ApiError::bad_request("bad_selector", e))?;
    debug!(envelope = %id, "published through the API");
    Ok(HttpResponse::Accepted().json(json!({"id": id})))
}

#[derive(Deserialize)]
struct RequestBody {
    address: String,
    body: Value,
    target: Option<String>,
    timeout_ms: Option<u64>,
}

async fn request(node: web::Data<NodeHandle>, req: web::Json<RequestBody>) -> Result<HttpResponse, ApiError> {
    let req = req.into_inner();
    check_address(&req.address)?;
    parse_target(req.target.as_deref())?;
    let timeout_ms = req.timeout_ms.unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS);
    if timeout_ms == 0 || timeout_ms > MAX_REQUEST_TIMEOUT_MS {
        warn!(timeout_ms, "rejected API request with a bad timeout");
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("`timeout_ms` must be between 1 and {MAX_REQUEST_TIMEOUT_MS}"),
        ));
    }
    let outcome = transponder(&node)?
        .send(RequestCluster::new(
            "api",
            &req.address,
            req.target,
            req.body,
            Duration::from_millis(timeout_ms),
        ))
        .await
        .map_err(|_| ApiError::unavailable("the transponder stopped while the request was in flight"))?
        .map_err(|e| ApiError::bad_request("bad_selector", e))?;
    Ok(HttpResponse::Ok().json(outcome))
}

#[derive(Deserialize)]
struct EventsQuery {
    address: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// Server-Sent Events: one `data:` line with an envelope per event. A first
/// comment line `: connected` tells the client the stream is live.
async fn events(node: web::Data<NodeHandle>, query: web::Query<EventsQuery>) -> HttpResponse {
    let EventsQuery { address, kind } = query.into_inner();
    let address = address.filter(|a| !a.is_empty());
    let kind = kind.filter(|k| !k.is_empty());
    let wanted = move |env: &Envelope| {
        address.as_ref().is_none_or(|a| &env.dst.address == a) && kind.as_ref().is_none_or(|k| env.kind.as_str() == k)
    };
    let live = BroadcastStream::new(node.tap.subscribe()).filter_map(move |item| {
        let frame = match item {
            Ok(env) if wanted(&env) => {
                let json = serde_json::to_string(&env).unwrap_or_default();
                Some(Bytes::from(format!("id: {}\ndata: {json}\n\n", env.id)))
            }
            Ok(_) => None,
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                Some(Bytes::from(format!(": lagged, {n} envelopes skipped\n\n")))
            }
        };
        futures_util::future::ready(frame.map(Ok::<_, actix_web::Error>))
    });
    let hello = futures_util::stream::once(futures_util::future::ready(Ok(Bytes::from_static(b": connected\n\n"))));
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(hello.chain(live))
}

/// The default and the largest time one node may take to deploy.
pub const DEFAULT_DEPLOY_TIMEOUT_MS: u64 = 120_000;

#[derive(Deserialize)]
struct SourceBody {
    url: Option<String>,
    path: Option<String>,
    /// The sha256 of a package this node holds: one uploaded with
    /// `POST /v1/packages`, as the CLI does for a local file.
    package: Option<String>,
}

#[derive(Deserialize)]
struct DeployBody {
    module: String,
    source: SourceBody,
    sha256: Option<String>,
    config: Option<Value>,
    target: Option<String>,
    batch: Option<usize>,
    #[serde(default)]
    continue_on_error: bool,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
struct UndeployBody {
    module: String,
    target: Option<String>,
    batch: Option<usize>,
    #[serde(default)]
    continue_on_error: bool,
    timeout_ms: Option<u64>,
}

fn rejected(code: &'static str, message: impl Into<String>) -> ApiError {
    let api = ApiError::bad_request(code, message);
    warn!(code, error = %api.message, "rejected API request");
    api
}

fn deploy_timeout(timeout_ms: Option<u64>) -> Result<Duration, ApiError> {
    let ms = timeout_ms.unwrap_or(DEFAULT_DEPLOY_TIMEOUT_MS);
    if ms == 0 || ms > MAX_REQUEST_TIMEOUT_MS {
        return Err(rejected(
            "invalid_request",
            format!("`timeout_ms` must be between 1 and {MAX_REQUEST_TIMEOUT_MS}"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

fn check_batch(batch: Option<usize>) -> Result<(), ApiError> {
    if batch == Some(0) {
        return Err(rejected("invalid_request", "`batch` must be at least 1"));
    }
    Ok(())
}

/// A deploy refused at the origin, as a 400 with its code (500 for a
/// failure of this node's own).
fn origin_rejected(e: OriginError) -> ApiError {
    match e {
        OriginError::Internal(message) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        e => rejected(e.code(), e.to_string()),
    }
}

#[derive(Deserialize)]
struct UploadQuery {
    sha256: Option<String>,
}

/// `POST /v1/packages`: a package's bytes, streamed into this node's cache
/// (up to `--max-package`, hashed as they come, checked against `?sha256=`
/// when given) and kept only if it is a valid package. The CLI uploads a
/// local package this way, reading it as its own user, so the node never
/// opens a path a caller names (SPEC §6 differs: see the README).
async fn upload_package(
    node: web::Data<NodeHandle>,
    query: web::Query<UploadQuery>,
    mut body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let expected = origin::optional_sha256(query.sha256.as_deref()).map_err(origin_rejected)?;
    let limit = node.settings.deployer.max_package_bytes;
    let fetch_rejected = |e| origin_rejected(OriginError::Fetch(e));
    let mut partial = node.deploy.cache.begin(limit).await.map_err(fetch_rejected)?;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| rejected("invalid_request", format!("the upload broke off: {e}")))?;
        partial.write(&chunk).await.map_err(fetch_rejected)?;
    }
    let held = partial.finish(expected.as_deref()).await.map_err(fetch_rejected)?;
    let manifest = origin::held_manifest(&node.deploy, &held)
        .await
        .map_err(origin_rejected)?;
    debug!(sha256 = %held.sha256, size = held.size, module_name = %manifest.name, "package uploaded");
    Ok(HttpResponse::Ok().json(json!({
        "sha256": held.sha256,
        "size": held.size,
        "module": manifest.name,
        "version": manifest.version,
    })))
}

async fn deploy(
    node: web::Data<NodeHandle>,
    http: HttpRequest,
    req: web::Json<DeployBody>,
) -> Result<HttpResponse, ApiError> {
    let req = req.into_inner();
    parse_target(req.target.as_deref())?;
    check_batch(req.batch)?;
    let timeout = deploy_timeout(req.timeout_ms)?;
    let request = DeployRequest {
        module: &req.module,
        url: req.source.url.as_deref(),
        path: req.source.path.as_deref(),
        package: req.source.package.as_deref(),
        sha256: req.sha256.as_deref(),
        config: req.config.as_ref(),
    };
    let order = origin::order_for(&node.deploy, &node.ctx.identity.name, &node.settings.deployer, request)
        .await
        .map_err(origin_rejected)?;
    let rollout = crate::deploy::rollout::Rollout {
        kind: MessageType::Deploy,
        order: serde_json::to_value(order).unwrap_or(Value::Null),
        target: req.target,
        batch: req.batch,
        continue_on_error: req.continue_on_error,
        timeout,
    };
    run_rollout(node.get_ref().clone(), &http, rollout).await
}

async fn undeploy(
    node: web::Data<NodeHandle>,
    http: HttpRequest,
    req: web::Json<UndeployBody>,
) -> Result<HttpResponse, ApiError> {
    let req = req.into_inner();
    crate::deploy::manifest::check_module_name(&req.module).map_err(|e| rejected("invalid_request", e))?;
    parse_target(req.target.as_deref())?;
    check_batch(req.batch)?;
    let rollout = crate::deploy::rollout::Rollout {
        kind: MessageType::Undeploy,
        order: json!({"module": req.module}),
        target: req.target,
        batch: req.batch,
        continue_on_error: req.continue_on_error,
        timeout: deploy_timeout(req.timeout_ms)?,
    };
    run_rollout(node.get_ref().clone(), &http, rollout).await
}

/// Answers the outcome as one JSON object, or, when the client accepts
/// `application/x-ndjson`, streams one line per event as results arrive:
/// `{"event":"start","expected":[…]}`, `{"event":"result",…}` per node, and
/// `{"event":"done",…outcome}` (or `{"event":"error","error"}`) last.
async fn run_rollout(
    node: NodeHandle,
    http: &HttpRequest,
    rollout: crate::deploy::rollout::Rollout,
) -> Result<HttpResponse, ApiError> {
    let streaming = http
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    if !streaming {
        let outcome = crate::deploy::rollout::run(&node.ctx, rollout, None)
            .await
            .map_err(ApiError::unavailable)?;
        return Ok(HttpResponse::Ok().json(outcome));
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel();
    let forward = tx.clone();
    actix_rt::spawn(async move {
        while let Some(p) = progress_rx.recv().await {
            let _ = forward.send(serde_json::to_value(p).unwrap_or(Value::Null));
        }
    });
    actix_rt::spawn(
        async move {
            let last = match crate::deploy::rollout::run(&node.ctx, rollout, Some(progress_tx)).await {
                Ok(outcome) => {
                    let mut v = serde_json::to_value(outcome).unwrap_or(Value::Null);
                    if let Some(obj) = v.as_object_mut() {
                        obj.insert("event".into(), json!("done"));
                    }
                    v
                }
                Err(e) => json!({"event": "error", "error": e}),
            };
            // Let the forwarder flush the last results first.
            tokio::task::yield_now().await;
            let _ = tx.send(last);
        }
        .in_current_span(),
    );
    let lines = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(|v| {
        let mut line = serde_json::to_vec(&v).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, actix_web::Error>(Bytes::from(line))
    });
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(lines))
}

/// `?target=`: the nodes a read is about, in the `--target` syntax.
#[derive(Deserialize)]
struct TargetQuery {
    target: Option<String>,
}

/// Every targeted node's modules from the status board: one local read,
/// however large the fleet. Nodes whose report is stale, or that are dead,
/// are listed with `stale: true` and an `error`; nodes that left are not
/// listed.
async fn modules(node: web::Data<NodeHandle>, query: web::Query<TargetQuery>) -> Result<HttpResponse, ApiError> {
    let target = parse_target(query.into_inner().target.as_deref().filter(|t| !t.is_empty()))?;
    let members = list_members(&node).await?;
    let views: Vec<NodeView> = node
        .status
        .view(&members, Instant::now())
        .into_iter()
        .filter(|v| v.member != Some(MemberStatus::Left))
        .filter(|v| target.as_ref().is_none_or(|t| t.matches(&v.node, &v.tags)))
        .collect();
    Ok(HttpResponse::Ok().json(views))
}

/// `conjoiner status` and the dashboard: every node with its membership,
/// report age and module health, failing nodes first, and a summary of the
/// whole fleet. `?target=` (the `--target` syntax) narrows the nodes listed,
/// not the summary; `shown` says how many are listed.
async fn status(node: web::Data<NodeHandle>, query: web::Query<TargetQuery>) -> Result<HttpResponse, ApiError> {
    let target = parse_target(query.into_inner().target.as_deref().filter(|t| !t.is_empty()))?;
    let members = list_members(&node).await?;
    let mut views = node.status.view(&members, Instant::now());
    views.sort_by_key(|v| (!v.is_failing(), v.node.clone()));
    let summary = summarize(&views);
    views.retain(|v| target.as_ref().is_none_or(|t| t.matches(&v.node, &v.tags)));
    // A node that has ways in (seeds, or peers it knew) but reaches no one
    // is cut off, not a healthy cluster of one.
    let known =
        crate::discovery::known_peers::load(&node.settings.data_dir.join(crate::discovery::known_peers::PEERS_FILE));
    let alone = !members
        .iter()
        .any(|m| m.name != node.ctx.identity.name && m.status == MemberStatus::Alive);
    let isolated = (alone && (!node.settings.join.is_empty() || !known.is_empty())).then(|| Isolation {
        seeds: node.settings.join.clone(),
        known_peers: known.len(),
    });
    Ok(HttpResponse::Ok().json(StatusAnswer {
        node: node.ctx.identity.name.clone(),
        cluster: node.ctx.identity.cluster.clone(),
        status_interval_ms: node.settings.monitor.interval.as_millis() as u64,
        isolated,
        summary,
        shown: views.len(),
        nodes: views,
    }))
}

/// Prometheus text. Counters are kept as events happen; levels (members,
/// peers, queues, modules) are read from the actors now.
async fn metrics(node: web::Data<NodeHandle>) -> Result<HttpResponse, ApiError> {
    let m = &node.ctx.metrics;
    let members = list_members(&node).await?;
    for status in [
        MemberStatus::Alive,
        MemberStatus::Suspect,
        MemberStatus::Dead,
        MemberStatus::Left,
    ] {
        let count = members.iter().filter(|x| x.status == status).count();
        m.set_level("conjoiner_members", &[("status", status.as_str())], count as f64);
    }
    if let Ok(cluster) = node.ctx.cluster.status.send(ClusterStatus).await {
        m.set_level("conjoiner_peers", &[], cluster.peers as f64);
        for link in &cluster.links {
            m.set_level(
                "conjoiner_peer_queue_bytes",
                &[("peer", &link.peer)],
                link.queued_bytes as f64,
            );
        }
    }
    let modules = node.modules().await;
    for state in ["starting", "running", "restarting", "stopping", "stopped", "failed"] {
        let count = modules.iter().filter(|x| module_state_name(&x.state) == state).count();
        m.set_level("conjoiner_modules", &[("state", state)], count as f64);
    }
    for module in &modules {
        let name = module.name.as_str();
        m.set_level("conjoiner_module_restarts", &[("module", name)], module.restarts as f64);
        let up = if module.state == ModuleState::Running { 1.0 } else { 0.0 };
        m.set_level("conjoiner_module_up", &[("module", name)], up);
    }
    m.set_level(
        "conjoiner_uptime_seconds",
        &[],
        node.ctx.started.elapsed().as_secs_f64(),
    );
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(m.render()))
}

fn module_state_name(state: &ModuleState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The dashboard: one static page, embedded in the binary, that polls
/// `/v1/status` and streams `/v1/events`.
async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(DASHBOARD_HTML)
}

const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");

/// Every actor's state snapshot (what SIGUSR1 logs), as JSON.
async fn debug_state(node: web::Data<NodeHandle>) -> HttpResponse {
    HttpResponse::Ok().json(node.dump_state().await)
}
