//! The control API (SPEC §6): HTTP + JSON on loopback, every route in this
//! file. The CLI, scripts and (later) the dashboard talk to the node here.
//!
//! Every error is `{"error": "<human sentence>", "code": "<snake_case>"}` with
//! a 4xx/5xx status, and every rejected input is logged. Bad input never
//! touches the node's state.

use crate::actors::cluster_bus::{ListMembers, MemberStatus};
use crate::actors::transponder::{PublishToCluster, RequestCluster};
use crate::node::NodeHandle;
use crate::wire::{Envelope, MessageType, Target};
use actix_web::dev::Service;
use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, ResponseError};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;
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
) -> std::io::Result<(actix_web::dev::ServerHandle, SocketAddr)> {
    let server = HttpServer::new(move || {
        // Every log line of a request (rejections included) names the node
        // and `module=api`.
        let span = node.identity.span("api");
        App::new()
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
    node.cluster
        .members
        .send(ListMembers)
        .await
        .map_err(|_| ApiError::unavailable("the cluster bus is not running"))
}

async fn health(node: web::Data<NodeHandle>) -> Result<HttpResponse, ApiError> {
    let members = list_members(&node).await?;
    let alive = members.iter().filter(|m| m.status == MemberStatus::Alive).count();
    Ok(HttpResponse::Ok().json(json!({
        "node": node.identity.name,
        "cluster": node.identity.cluster,
        "status": "ok",
        "members_alive": alive,
        "uptime_ms": node.started.elapsed().as_millis() as u64,
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
        .send(RequestCluster {
            module: "api".into(),
            address: req.address,
            target: req.target,
            body: req.body,
            timeout: Duration::from_millis(timeout_ms),
        })
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
