//! The HTTP client every CLI command uses to reach the local node's control API.

use super::CliError;
use crate::deploy::steer::Driver;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

static TOKEN_FILE: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

/// `--token-file`, for every client made after.
pub fn set_token_file(file: Option<std::path::PathBuf>) {
    let _ = TOKEN_FILE.set(file);
}

/// The node's API token, or where it was looked for.
fn token() -> Result<String, Vec<std::path::PathBuf>> {
    crate::api_token::find_for_cli(TOKEN_FILE.get().and_then(|f| f.as_deref()))
}

/// Adds the API token to a request that changes something; without one,
/// the node's 401 answer says where it was looked for.
fn with_token(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match token() {
        Ok(token) => request.bearer_auth(token),
        Err(_) => request,
    }
}

impl ApiClient {
    /// A client for the control API at `addr` (`host:port` or a full URL).
    pub fn new(addr: &str) -> ApiClient {
        let base = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.trim_end_matches('/').to_string()
        } else {
            format!("http://{addr}")
        };
        // reqwest is built with rustls and no default crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        ApiClient {
            base,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, &str)]) -> Result<T, CliError> {
        let response = self.stream(path, query).await?;
        decode(response).await
    }

    /// The node this client talks to, as a rollout's driver: its name and
    /// identity key (from `GET /v1/health`), which a signed rollout or
    /// steer names.
    pub async fn driver(&self) -> Result<Driver, CliError> {
        let health: Value = self.get("/v1/health", &[]).await?;
        match (health["node"].as_str(), health["identity"].as_str()) {
            (Some(node), Some(key)) => Ok(Driver {
                node: node.to_string(),
                key: key.to_string(),
            }),
            _ => Err(CliError::error(
                "the node's health answer names no node and identity key to sign the command for",
            )),
        }
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, CliError> {
        let response = self.send(with_token(self.http.post(self.url(path))).json(body)).await?;
        decode(response).await
    }

    /// POSTs a file's bytes, streamed (a package upload).
    pub async fn post_file<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        file: tokio::fs::File,
    ) -> Result<T, CliError> {
        let request = with_token(self.http.post(self.url(path)))
            .query(query)
            .header("Content-Type", "application/octet-stream")
            .body(reqwest::Body::from(file));
        decode(self.send(request).await?).await
    }

    /// POSTs and answers the response for streaming (NDJSON rollouts).
    pub async fn post_stream(&self, path: &str, body: &Value, accept: &str) -> Result<reqwest::Response, CliError> {
        let request = with_token(self.http.post(self.url(path)))
            .header("Accept", accept)
            .json(body);
        self.send(request).await
    }

    /// Sends a GET and answers the response once its status says success;
    /// the body can then be read whole or as a stream (Server-Sent Events).
    /// The token goes along when the CLI can read it: the event stream
    /// shows bodies only to its holders.
    pub async fn stream(&self, path: &str, query: &[(&str, &str)]) -> Result<reqwest::Response, CliError> {
        let request = with_token(self.http.get(self.url(path)).query(query));
        self.send(request).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, CliError> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        if !response.status().is_success() {
            return Err(api_error(response).await);
        }
        Ok(response)
    }

    fn unreachable(&self, e: reqwest::Error) -> CliError {
        CliError::error(format!(
            "cannot reach the node's control API at {}: {e}. Is `conjoiner agent` running? (set --http or CONJOINER_HTTP)",
            self.base
        ))
    }
}

async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, CliError> {
    response
        .json()
        .await
        .map_err(|e| CliError::error(format!("the node answered something unexpected: {e}")))
}

/// Turns an API error answer (`{"error","code"}`) into a CLI error. A 400 is
/// the caller's mistake, so it exits 2 like any usage error.
async fn api_error(response: reqwest::Response) -> CliError {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let message = body.get("error").and_then(Value::as_str).unwrap_or("no error message");
    let code = body.get("code").and_then(Value::as_str).unwrap_or("unknown");
    let mut text = format!("{message} ({code}, HTTP {})", status.as_u16());
    if status.as_u16() == 401 {
        if let Err(places) = token() {
            let places: Vec<String> = places.iter().map(|p| p.display().to_string()).collect();
            text.push_str(&format!(
                "; no token found in CONJOINER_TOKEN or {} (run as the node's user, or pass --token-file)",
                places.join(", ")
            ));
        }
    }
    if status.as_u16() == 400 {
        CliError::usage(text)
    } else {
        CliError::error(text)
    }
}
