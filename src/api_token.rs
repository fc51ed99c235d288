//! The control API's token. Loopback is not a trust boundary on a shared
//! host: any local user (`nobody` included) could deploy to the whole fleet
//! through `127.0.0.1:7373`. So every route that changes anything (each
//! `POST`) needs `Authorization: Bearer <token>`. The token is made at the
//! node's first start and kept in `<data-dir>/api.token`, mode 0600 in a
//! 0700 data dir, so only the node's own user and root can read it; the CLI
//! reads it from there. Reading routes (`GET`: health, members, status,
//! metrics, events, the dashboard) stay open to local users.

use std::path::{Path, PathBuf};

/// The token's file in the data dir.
pub const API_TOKEN_FILE: &str = "api.token";
/// The agent's default data dir, where the CLI looks last.
pub const DEFAULT_DATA_DIR: &str = "./conjoiner-data";

/// The node's token: read from `<data_dir>/api.token`, or made (32 random
/// bytes, hex) and written there if there is none yet.
pub fn load_or_create(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(API_TOKEN_FILE);
    match crate::private_file::read_to_string(&path) {
        Ok(text) if valid(text.trim()) => return Ok(text.trim().to_string()),
        Ok(_) => tracing::warn!(file = %path.display(), "the API token file is not a valid token; making a new one"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let bytes: [u8; 32] = rand::random();
    let token = hex::encode(bytes);
    crate::private_file::write(&path, format!("{token}\n").as_bytes())?;
    Ok(token)
}

/// A token is 16 to 256 visible ASCII characters.
fn valid(token: &str) -> bool {
    (16..=256).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_graphic())
}

/// Does an `Authorization` header carry `expected`? Compared in constant
/// time, so the answer's timing does not tell how much of a guess was right.
pub fn authorized(expected: &str, header: Option<&str>) -> bool {
    let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim) else {
        return false;
    };
    if given.len() != expected.len() {
        return false;
    }
    given
        .bytes()
        .zip(expected.bytes())
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

/// Where the CLI looks for the token, first found wins: `CONJOINER_TOKEN`
/// itself, then `--token-file` (or `CONJOINER_TOKEN_FILE`), then
/// `api.token` in `CONJOINER_DATA_DIR`, then in the agent's default data
/// dir. Answers the token, or the places it looked.
pub fn find_for_cli(token_file: Option<&Path>) -> Result<String, Vec<PathBuf>> {
    if let Ok(token) = std::env::var("CONJOINER_TOKEN") {
        if valid(token.trim()) {
            return Ok(token.trim().to_string());
        }
    }
    let mut places: Vec<PathBuf> = Vec::new();
    if let Some(file) = token_file {
        places.push(file.to_path_buf());
    }
    if let Ok(dir) = std::env::var("CONJOINER_DATA_DIR") {
        places.push(Path::new(&dir).join(API_TOKEN_FILE));
    }
    places.push(Path::new(DEFAULT_DATA_DIR).join(API_TOKEN_FILE));
    for place in &places {
        if let Ok(text) = std::fs::read_to_string(place) {
            if valid(text.trim()) {
                return Ok(text.trim().to_string());
            }
        }
    }
    Err(places)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_once_private_and_kept() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(load_or_create(dir.path()).unwrap(), first, "kept across restarts");
        let mode = std::fs::metadata(dir.path().join(API_TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(API_TOKEN_FILE), "short").unwrap();
        assert_ne!(load_or_create(dir.path()).unwrap(), "short", "a bad file is replaced");
    }

    #[test]
    fn only_the_exact_bearer_token_is_authorized() {
        let token = "0123456789abcdef0123456789abcdef";
        assert!(authorized(token, Some(&format!("Bearer {token}"))));
        assert!(!authorized(token, None));
        assert!(!authorized(token, Some(token)), "the scheme is required");
        assert!(!authorized(token, Some("Bearer 0123456789abcdef0123456789abcdeX")));
        assert!(!authorized(token, Some("Bearer 0123")));
        assert!(!authorized(token, Some("Bearer ")));
    }
}
