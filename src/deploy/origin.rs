//! A deploy from this node, the origin: a request (from the control API)
//! turned into what the table entry asks of every targeted node. The
//! package is fetched here first, whatever its source (a URL, a package
//! uploaded before, or a path read here, only inside `--package-dir`), so
//! the entry names it by its checksum, a bad source or package is refused
//! before any node acts, and this node offers it to the others as a peer.
//! A URL stays in the entry, for the nodes that reach it themselves.

use super::fetch::{CachedPackage, FetchError, PackageSource};
use super::install::DeployerConfig;
use super::manifest::{check_module_name, Manifest};
use super::order::{DeployOrder, OrderSource, NOT_HELD};
use super::package::{parse_sha256, read_manifest};
use super::state::DeployState;
use serde_json::Value;
use std::path::PathBuf;

/// Why a deploy request was refused at the origin. `code()` is the stable
/// error code the control API answers with.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    BadSource(String),
    #[error("{0}")]
    ChecksumMismatch(String),
    #[error("{0}")]
    NotHeld(String),
    #[error("{0}")]
    BadPackage(String),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{0}")]
    Internal(String),
}

impl OriginError {
    pub fn code(&self) -> &'static str {
        match self {
            OriginError::InvalidRequest(_) => "invalid_request",
            OriginError::BadSource(_) => "bad_source",
            OriginError::ChecksumMismatch(_) => "checksum_mismatch",
            OriginError::NotHeld(_) => NOT_HELD,
            OriginError::BadPackage(_) => "bad_package",
            OriginError::Fetch(e) => e.code(),
            OriginError::Internal(_) => "internal",
        }
    }
}

/// A deploy as asked for: the module, exactly one of `url`, `path` or
/// `package` (a sha256 this node holds), and the optional checksum and
/// config.
pub struct DeployRequest<'a> {
    pub module: &'a str,
    pub url: Option<&'a str>,
    pub path: Option<&'a str>,
    pub package: Option<&'a str>,
    pub sha256: Option<&'a str>,
    pub config: Option<&'a Value>,
}

/// A `sha256` a caller may give: absent, or 64 hex digits.
pub fn optional_sha256(text: Option<&str>) -> Result<Option<String>, OriginError> {
    text.map(parse_sha256).transpose().map_err(OriginError::InvalidRequest)
}

/// The order for `req`, from this node (`me`).
pub async fn order_for(
    state: &DeployState,
    me: &str,
    config: &DeployerConfig,
    req: DeployRequest<'_>,
) -> Result<DeployOrder, OriginError> {
    check_module_name(req.module).map_err(OriginError::InvalidRequest)?;
    let sha256 = optional_sha256(req.sha256)?;
    if req.config.is_some_and(|c| !c.is_object()) {
        return Err(OriginError::InvalidRequest("`config` must be a JSON object".into()));
    }
    let order = |source: OrderSource, sha256: Option<String>| DeployOrder {
        module: req.module.to_string(),
        source,
        sha256,
        config: req.config.cloned(),
    };
    let held = match (req.url, req.path, req.package) {
        (Some(url), None, None) => {
            // The origin fetches it first: a deploy entry names the exact
            // package by its checksum, a bad URL or package is refused here
            // before any node acts, and nodes the URL fails on can fetch
            // it from this one.
            let source = PackageSource::parse(url).map_err(|e| OriginError::BadSource(e.to_string()))?;
            tracing::info!(module_name = %req.module, %url, "fetching the package at the origin before writing the entry");
            let held = state
                .cache
                .fetch_with(&source, sha256.as_deref(), config.max_package_bytes, config.stall)
                .await?;
            let manifest = held_manifest(state, &held).await?;
            if manifest.name != req.module {
                return Err(OriginError::BadPackage(format!(
                    "the package holds module `{}`, not `{}`",
                    manifest.name, req.module
                )));
            }
            let source = OrderSource {
                url: Some(url.to_string()),
                peer: Some(me.to_string()),
                size: Some(held.size),
            };
            state.mark_originated(&held.sha256);
            return Ok(order(source, Some(held.sha256)));
        }
        (None, Some(path), None) => {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(OriginError::BadSource(
                    "`source.path` must be absolute (it is read by the node, not the client)".into(),
                ));
            }
            state
                .cache
                .fetch_with(
                    &PackageSource::File(path),
                    sha256.as_deref(),
                    config.max_package_bytes,
                    config.stall,
                )
                .await?
        }
        (None, None, Some(package)) => {
            let package = parse_sha256(package).map_err(OriginError::InvalidRequest)?;
            if sha256.as_ref().is_some_and(|sha| *sha != package) {
                return Err(OriginError::ChecksumMismatch(format!(
                    "`sha256` is {}, but `source.package` names {package}",
                    sha256.unwrap_or_default()
                )));
            }
            state.cache.get(&package).ok_or_else(|| {
                OriginError::NotHeld(format!(
                    "this node holds no package {package}; upload it with POST /v1/packages first"
                ))
            })?
        }
        _ => {
            return Err(OriginError::InvalidRequest(
                "`source` must have exactly one of `url`, `path` or `package`".into(),
            ))
        }
    };
    // The targeted nodes fetch a held package from this node, peer to
    // peer, once its manifest names the module.
    let manifest = held_manifest(state, &held).await?;
    if manifest.name != req.module {
        return Err(OriginError::BadPackage(format!(
            "the package holds module `{}`, not `{}`",
            manifest.name, req.module
        )));
    }
    let source = OrderSource {
        url: None,
        peer: Some(me.to_string()),
        size: Some(held.size),
    };
    state.mark_originated(&held.sha256);
    Ok(order(source, Some(held.sha256)))
}

/// The manifest of a cached package; one that is not a valid package is
/// dropped from the cache.
pub async fn held_manifest(state: &DeployState, held: &CachedPackage) -> Result<Manifest, OriginError> {
    let path = held.path.clone();
    tokio::task::spawn_blocking(move || read_manifest(&path))
        .await
        .map_err(|e| OriginError::Internal(e.to_string()))?
        .map_err(|e| {
            state.cache.evict(held);
            OriginError::BadPackage(e)
        })
}
