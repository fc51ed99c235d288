//! `GET /v1/audit?since_ms=&module=`: this node's audit lines, oldest
//! first (the newest 1,000 that match). `conjoiner audit` gathers them from
//! the fleet through `mod.deployer` instead.

use crate::audit::AuditQuery;
use crate::deploy::install::blocking;
use crate::node::NodeHandle;
use actix_web::{web, HttpResponse};
use serde_json::json;

pub async fn lines(node: web::Data<NodeHandle>, query: web::Query<AuditQuery>) -> HttpResponse {
    let state = node.deploy.clone();
    let query = query.into_inner();
    let lines = blocking(move || state.audit.read(&query)).await;
    HttpResponse::Ok().json(json!({ "node": node.ctx.identity.name, "lines": lines }))
}
