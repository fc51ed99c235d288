//! Fetching packages into the node's package cache (`<data-dir>/packages/`).
//!
//! Every fetch streams into a `.partial-*` file while hashing and counting,
//! so a package over the size limit is cut off as soon as it passes it, and
//! one whose sha256 is wrong never gets a cache name. A finished package is
//! renamed to `<sha256>.tar.gz`; the cache is content-addressed, so a package
//! already there is never fetched again.

use super::disk::WriteError;
use super::package::parse_sha256;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// The HTTP client packages are downloaded with, built on the first http(s)
/// fetch and shared by every node in the process. Building it reads the
/// system's root certificates (about 140 files here); done at start, that was
/// most of a node's start-up CPU, though most nodes never fetch over https.
/// https uses rustls with the ring provider.
pub fn http_client() -> Result<reqwest::Client, String> {
    static CLIENT: std::sync::OnceLock<Result<reqwest::Client, String>> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .user_agent(concat!("conjoiner/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))
        })
        .clone()
}

/// Where a package comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackageSource {
    /// `http://` or `https://`, fetched by each node itself.
    Http(String),
    /// A file on this node (`file://` URL or a plain path).
    File(PathBuf),
}

impl PackageSource {
    /// Parses `--from`: a URL (`http`, `https`, `file`) or a path.
    pub fn parse(s: &str) -> Result<PackageSource, FetchError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(FetchError::BadSource("the package source is empty".into()));
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            reqwest::Url::parse(s).map_err(|e| FetchError::BadSource(format!("`{s}` is not a valid URL: {e}")))?;
            return Ok(PackageSource::Http(s.to_string()));
        }
        if s.starts_with("file://") {
            let url =
                reqwest::Url::parse(s).map_err(|e| FetchError::BadSource(format!("`{s}` is not a valid URL: {e}")))?;
            let path = url
                .to_file_path()
                .map_err(|_| FetchError::BadSource(format!("`{s}` is not a local file URL")))?;
            return Ok(PackageSource::File(path));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(FetchError::BadSource(format!(
                "unsupported URL scheme `{scheme}`: use http://, https://, file:// or a path"
            )));
        }
        Ok(PackageSource::File(PathBuf::from(s)))
    }
}

/// Why a package could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    BadSource(String),
    #[error("package is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("sha256 mismatch: expected {expected}, the package has {actual}")]
    ChecksumMismatch { expected: String, actual: String },
    #[error("cannot fetch the package: {0}")]
    Transfer(String),
    #[error("package cache error: {0}")]
    Cache(String),
    /// The package could not be written into the cache for want of space.
    #[error("the disk is full: {0}")]
    DiskFull(String),
    /// A `file://` source or path outside every `--package-dir`: the node
    /// runs as a privileged user, and a deploy must not make it read (and
    /// offer to the fleet) a file its caller could not.
    #[error("{path} is not inside a directory this node may read packages from ({allowed})")]
    NotAllowed { path: String, allowed: String },
}

impl FetchError {
    /// The stable code reported in `deploy_result`.
    pub fn code(&self) -> &'static str {
        match self {
            FetchError::BadSource(_) => "bad_source",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::ChecksumMismatch { .. } => "checksum_mismatch",
            FetchError::Transfer(_) => "fetch_failed",
            FetchError::Cache(_) => "cache_error",
            FetchError::DiskFull(_) => "disk_full",
            FetchError::NotAllowed { .. } => "path_not_allowed",
        }
    }
}

/// How slow a download may be: one that moves fewer than `min_bytes` in
/// any `window` has stalled and fails. A server sending one byte a second
/// once held a node's Deployer for the whole 300 s fetch timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallRule {
    pub window: Duration,
    pub min_bytes: u64,
}

impl Default for StallRule {
    /// 16 KiB in any 15 s: about 1 KiB/s, which any working link beats.
    fn default() -> Self {
        StallRule {
            window: Duration::from_secs(15),
            min_bytes: 16 * 1024,
        }
    }
}

/// How long a node gives a package's URL when peers hold the package too:
/// `base` plus the package's size at `min_bytes_per_sec`. Past that the
/// node fetches it from the peers instead. Without this, four URLs that
/// trickled just above the stall rule held every step slot of every node
/// that was not the origin, and another module's deploy waited minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrlDeadline {
    pub base: Duration,
    pub min_bytes_per_sec: u64,
}

impl Default for UrlDeadline {
    /// 10 s, plus 1 MiB/s of the package: a LAN mirror beats it many times.
    fn default() -> Self {
        UrlDeadline {
            base: Duration::from_secs(10),
            min_bytes_per_sec: 1024 * 1024,
        }
    }
}

impl UrlDeadline {
    /// The deadline for a package of `size` bytes (the base alone when the
    /// size is not known).
    pub fn for_size(&self, size: Option<u64>) -> Duration {
        let rate = self.min_bytes_per_sec.max(1) as f64;
        self.base + Duration::from_secs_f64(size.unwrap_or(0) as f64 / rate)
    }
}

/// Watches a download against a [`StallRule`]. Pure: time comes in.
#[derive(Debug, Clone)]
pub struct StallWatch {
    rule: StallRule,
    window_start: Instant,
    in_window: u64,
}

impl StallWatch {
    pub fn new(rule: StallRule, now: Instant) -> StallWatch {
        StallWatch {
            rule,
            window_start: now,
            in_window: 0,
        }
    }

    /// When the current window ends: the transfer must have moved enough
    /// by then.
    pub fn deadline(&self) -> Instant {
        self.window_start + self.rule.window
    }

    /// Counts `bytes` that arrived.
    pub fn moved(&mut self, bytes: u64) {
        self.in_window += bytes;
    }

    /// At or after a window's end: fails if it moved too little, else
    /// starts the next window.
    pub fn check(&mut self, now: Instant) -> Result<(), FetchError> {
        if now < self.deadline() {
            return Ok(());
        }
        if self.in_window < self.rule.min_bytes {
            return Err(FetchError::Transfer(format!(
                "the download stalled: {} bytes in {:?} (at least {} needed)",
                self.in_window, self.rule.window, self.rule.min_bytes
            )));
        }
        self.window_start = now;
        self.in_window = 0;
        Ok(())
    }
}

/// A package in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPackage {
    pub sha256: String,
    pub path: PathBuf,
    pub size: u64,
}

/// The content-addressed package cache of a node.
/// Creates `dir` (and its parents) if needed and makes it 0700: the data
/// dir and the package cache may hold what an operator fetched by mistake,
/// and other local users must not read it.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[derive(Debug, Clone)]
pub struct PackageCache {
    dir: PathBuf,
    readable: PackageDirs,
}

/// The directories a node may read `file://` packages and paths from
/// (`agent --package-dir`, repeatable; none by default). Kept as canonical
/// paths, and checked against the file actually opened, so neither `..` nor
/// a symbolic link swapped in after the check leads outside them.
#[derive(Debug, Clone, Default)]
pub struct PackageDirs(Vec<PathBuf>);

impl PackageDirs {
    /// Canonicalises every directory; one that does not exist is an error,
    /// since a typo would otherwise refuse every deploy from it.
    pub fn new(dirs: &[PathBuf]) -> std::io::Result<PackageDirs> {
        let mut canonical = Vec::with_capacity(dirs.len());
        for dir in dirs {
            let real = std::fs::canonicalize(dir)
                .map_err(|e| std::io::Error::new(e.kind(), format!("--package-dir {}: {e}", dir.display())))?;
            if !real.is_dir() {
                return Err(std::io::Error::other(format!(
                    "--package-dir {}: not a directory",
                    dir.display()
                )));
            }
            canonical.push(real);
        }
        Ok(PackageDirs(canonical))
    }

    /// Whether the canonical path `real` lies inside an allowed directory.
    pub fn allows(&self, real: &Path) -> bool {
        self.0.iter().any(|dir| real.starts_with(dir))
    }

    /// The refusal for `path`, naming what is allowed.
    fn refuse(&self, path: &Path) -> FetchError {
        let allowed = if self.0.is_empty() {
            "none are allowed; start the agent with --package-dir DIR".to_string()
        } else {
            let dirs: Vec<String> = self.0.iter().map(|d| d.display().to_string()).collect();
            format!("--package-dir {}", dirs.join(", "))
        };
        FetchError::NotAllowed {
            path: path.display().to_string(),
            allowed,
        }
    }

    /// Opens `path` for reading if it is an allowed regular file. The check
    /// is made on the opened file's own path (`/proc/self/fd`), after the
    /// open, so nothing can be swapped in between.
    async fn open(&self, path: &Path) -> Result<tokio::fs::File, FetchError> {
        // Checked before opening too: opening a FIFO or device outside the
        // allowed folders could block or have effects.
        let before = tokio::fs::canonicalize(path).await;
        if self.0.is_empty() || before.as_deref().is_ok_and(|real| !self.allows(real)) {
            return Err(self.refuse(path));
        }
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .await
            .map_err(|e| FetchError::BadSource(format!("cannot open {}: {e}", path.display())))?;
        use std::os::fd::AsRawFd as _;
        let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|e| FetchError::BadSource(format!("cannot tell where {} leads: {e}", path.display())))?;
        if !self.allows(&real) {
            return Err(self.refuse(path));
        }
        Ok(file)
    }
}

impl PackageCache {
    /// Opens (creating) the cache in `dir` and removes leftovers of fetches
    /// that a crash interrupted. `file://` sources are read only from
    /// `readable`.
    pub fn open(dir: &Path, readable: PackageDirs) -> std::io::Result<PackageCache> {
        private_dir(dir)?;
        for entry in std::fs::read_dir(dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".partial-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(PackageCache {
            dir: dir.to_path_buf(),
            readable,
        })
    }

    /// Where the package with this sha256 lives (whether or not it is there).
    /// `sha256` must already be validated hex, so the name cannot escape.
    pub fn path_of(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.tar.gz"))
    }

    /// Drops a fetched file that turned out not to be a valid package, so
    /// the cache only ever holds packages (a deploy from `/etc/shadow` must
    /// not leave a copy behind).
    pub fn evict(&self, package: &CachedPackage) {
        match std::fs::remove_file(&package.path) {
            Ok(()) => {
                tracing::info!(sha256 = %package.sha256, "dropped a file that is not a valid package from the cache")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(sha256 = %package.sha256, error = %e, "cannot drop an invalid package from the cache")
            }
        }
    }

    /// The cached package with this sha256, if any.
    pub fn get(&self, sha256: &str) -> Option<CachedPackage> {
        let sha = parse_sha256(sha256).ok()?;
        let path = self.path_of(&sha);
        let meta = std::fs::metadata(&path).ok()?;
        meta.is_file().then_some(CachedPackage {
            sha256: sha,
            path,
            size: meta.len(),
        })
    }

    /// Starts a new download into the cache.
    pub async fn begin(&self, limit: u64) -> Result<PartialPackage, FetchError> {
        let path = self.dir.join(format!(".partial-{}", uuid::Uuid::now_v7()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .await
            .map_err(|e| cache_write_error(format!("cannot create {}", path.display()), &e))?;
        Ok(PartialPackage {
            cache: self.clone(),
            path,
            file: Some(file),
            stored: false,
            hasher: Sha256::new(),
            size: 0,
            limit,
        })
    }

    /// Fetches from `source` into the cache, unless the expected sha256 is
    /// cached already.
    pub async fn fetch(
        &self,
        source: &PackageSource,
        expected: Option<&str>,
        limit: u64,
    ) -> Result<CachedPackage, FetchError> {
        self.fetch_with(source, expected, limit, StallRule::default()).await
    }

    /// [`PackageCache::fetch`], failing an http(s) download that stalls
    /// under `stall`.
    pub async fn fetch_with(
        &self,
        source: &PackageSource,
        expected: Option<&str>,
        limit: u64,
        stall: StallRule,
    ) -> Result<CachedPackage, FetchError> {
        if let Some(hit) = expected.and_then(|sha| self.get(sha)) {
            return Ok(hit);
        }
        let mut partial = self.begin(limit).await?;
        match source {
            PackageSource::File(path) => {
                let mut file = self.readable.open(path).await?;
                let meta = file.metadata().await.map_err(|e| FetchError::Transfer(e.to_string()))?;
                if !meta.is_file() {
                    return Err(FetchError::BadSource(format!(
                        "{} is not a regular file",
                        path.display()
                    )));
                }
                if meta.len() > limit {
                    return Err(FetchError::TooLarge { limit });
                }
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = tokio::io::AsyncReadExt::read(&mut file, &mut buf)
                        .await
                        .map_err(|e| FetchError::Transfer(format!("reading {}: {e}", path.display())))?;
                    if n == 0 {
                        break;
                    }
                    partial.write(&buf[..n]).await?;
                }
            }
            PackageSource::Http(url) => {
                let response = http_client()
                    .map_err(FetchError::Transfer)?
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| FetchError::Transfer(format!("GET {url}: {e}")))?;
                if !response.status().is_success() {
                    return Err(FetchError::Transfer(format!("GET {url}: HTTP {}", response.status())));
                }
                if response.content_length().is_some_and(|len| len > limit) {
                    return Err(FetchError::TooLarge { limit });
                }
                let mut body = response.bytes_stream();
                let mut watch = StallWatch::new(stall, Instant::now());
                loop {
                    let next =
                        tokio::time::timeout_at(watch.deadline().into(), futures_util::StreamExt::next(&mut body));
                    let chunk = match next.await {
                        Ok(None) => break,
                        Ok(Some(chunk)) => chunk.map_err(|e| FetchError::Transfer(format!("GET {url}: {e}")))?,
                        // Nothing came by the window's end: judge what did.
                        Err(_) => {
                            watch.check(Instant::now())?;
                            continue;
                        }
                    };
                    watch.moved(chunk.len() as u64);
                    watch.check(Instant::now())?;
                    partial.write(&chunk).await?;
                }
            }
        }
        partial.finish(expected).await
    }
}

/// A download in progress: hashed and counted as it is written.
pub struct PartialPackage {
    cache: PackageCache,
    path: PathBuf,
    file: Option<tokio::fs::File>,
    /// Renamed into the cache; nothing to clean up.
    stored: bool,
    hasher: Sha256,
    size: u64,
    limit: u64,
}

impl PartialPackage {
    pub async fn write(&mut self, data: &[u8]) -> Result<(), FetchError> {
        self.size += data.len() as u64;
        if self.size > self.limit {
            return Err(FetchError::TooLarge { limit: self.limit });
        }
        self.hasher.update(data);
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| FetchError::Cache("download already finished".into()))?;
        file.write_all(data)
            .await
            .map_err(|e| cache_write_error(format!("cannot write {}", self.path.display()), &e))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Checks the sha256 and gives the package its cache name.
    pub async fn finish(mut self, expected: Option<&str>) -> Result<CachedPackage, FetchError> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| FetchError::Cache("download already finished".into()))?;
        let what = || format!("cannot write {}", self.path.display());
        file.flush().await.map_err(|e| cache_write_error(what(), &e))?;
        file.sync_all().await.map_err(|e| cache_write_error(what(), &e))?;
        drop(file);
        let actual = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if let Some(expected) = expected {
            if expected != actual {
                return Err(FetchError::ChecksumMismatch {
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        let path = self.cache.path_of(&actual);
        tokio::fs::rename(&self.path, &path)
            .await
            .map_err(|e| FetchError::Cache(format!("cannot store {}: {e}", path.display())))?;
        self.stored = true;
        Ok(CachedPackage {
            sha256: actual,
            path,
            size: self.size,
        })
    }
}

/// A failed write into the cache: `disk_full` when it is, else `cache_error`.
fn cache_write_error(what: String, e: &std::io::Error) -> FetchError {
    match WriteError::new(what, e) {
        WriteError::DiskFull(m) => FetchError::DiskFull(m),
        WriteError::Failed(m) => FetchError::Cache(m),
    }
}

impl Drop for PartialPackage {
    /// An abandoned download leaves nothing behind.
    fn drop(&mut self) {
        if !self.stored {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_gets_its_base_and_a_share_of_its_size() {
        let d = UrlDeadline::default();
        assert_eq!(d.for_size(None), Duration::from_secs(10));
        assert_eq!(d.for_size(Some(5 * 1024 * 1024)), Duration::from_secs(15));
        let stingy = UrlDeadline {
            base: Duration::ZERO,
            min_bytes_per_sec: 0,
        };
        assert_eq!(
            stingy.for_size(Some(3)),
            Duration::from_secs(3),
            "a rate of 0 counts as 1 B/s"
        );
    }

    #[test]
    fn sources_parse() {
        assert_eq!(
            PackageSource::parse("https://repo/x.tar.gz").unwrap(),
            PackageSource::Http("https://repo/x.tar.gz".into())
        );
        assert_eq!(
            PackageSource::parse("file:///tmp/x.tar.gz").unwrap(),
            PackageSource::File("/tmp/x.tar.gz".into())
        );
        assert_eq!(
            PackageSource::parse("./x.tar.gz").unwrap(),
            PackageSource::File("./x.tar.gz".into())
        );
        assert!(PackageSource::parse("ftp://x").unwrap_err().to_string().contains("ftp"));
        assert!(PackageSource::parse("").is_err());
    }

    /// Serves `body` over plain HTTP to every connection; answers the URL.
    fn serve(body: Vec<u8>) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&body);
            }
        });
        format!("http://{addr}/pkg.tar.gz")
    }

    #[actix_rt::test]
    async fn fetch_over_http_streams_checks_and_limits() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = PackageCache::open(&tmp.path().join("packages"), PackageDirs::default()).unwrap();
        let body = vec![42u8; 5000];
        let sha = hex::encode(Sha256::digest(&body));
        let source = PackageSource::parse(&serve(body)).unwrap();
        let err = cache.fetch(&source, None, 4999).await.unwrap_err();
        assert_eq!(
            err,
            FetchError::TooLarge { limit: 4999 },
            "Content-Length over the limit"
        );
        let got = cache.fetch(&source, Some(&sha), 10_000).await.unwrap();
        assert_eq!((got.size, got.sha256), (5000, sha));
        let missing = PackageSource::parse("http://127.0.0.1:9/nothing").unwrap();
        let err = cache.fetch(&missing, None, 10_000).await.unwrap_err();
        assert_eq!(err.code(), "fetch_failed");
    }

    #[test]
    fn a_transfer_must_move_enough_in_every_window() {
        let t0 = Instant::now();
        let rule = StallRule {
            window: Duration::from_secs(10),
            min_bytes: 100,
        };
        let mut watch = StallWatch::new(rule, t0);
        watch.moved(60);
        assert!(
            watch.check(t0 + Duration::from_secs(5)).is_ok(),
            "judged at the window's end"
        );
        watch.moved(60);
        assert!(watch.check(t0 + Duration::from_secs(10)).is_ok(), "120 bytes: enough");
        assert_eq!(watch.deadline(), t0 + Duration::from_secs(20), "a new window");
        watch.moved(99);
        let err = watch.check(t0 + Duration::from_secs(20)).unwrap_err();
        assert!(err.to_string().contains("stalled: 99 bytes"), "{err}");
    }

    /// Serves `body` one byte every `gap`, like a hostile or broken server.
    fn serve_slowly(body: Vec<u8>, gap: Duration) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request);
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = conn.write_all(head.as_bytes());
                for byte in &body {
                    if conn.write_all(&[*byte]).is_err() {
                        break;
                    }
                    std::thread::sleep(gap);
                }
            }
        });
        format!("http://{addr}/slow.tar.gz")
    }

    #[actix_rt::test]
    async fn a_download_that_trickles_fails_as_stalled() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = PackageCache::open(&tmp.path().join("packages"), PackageDirs::default()).unwrap();
        let source = PackageSource::parse(&serve_slowly(vec![7u8; 1000], Duration::from_millis(50))).unwrap();
        let rule = StallRule {
            window: Duration::from_millis(300),
            min_bytes: 100,
        };
        let err = cache.fetch_with(&source, None, 10_000, rule).await.unwrap_err();
        assert_eq!(err.code(), "fetch_failed");
        assert!(err.to_string().contains("stalled"), "{err}");
    }

    #[actix_rt::test]
    async fn fetch_checks_size_and_sha_and_caches() {
        let tmp = tempfile::tempdir().unwrap();
        let readable = PackageDirs::new(&[tmp.path().to_path_buf()]).unwrap();
        let cache = PackageCache::open(&tmp.path().join("packages"), readable).unwrap();
        let src = tmp.path().join("pkg.tar.gz");
        std::fs::write(&src, vec![7u8; 1000]).unwrap();
        let sha = super::super::package::sha256_file(&src).unwrap();
        let source = PackageSource::File(src.clone());

        let err = cache.fetch(&source, None, 999).await.unwrap_err();
        assert_eq!(err, FetchError::TooLarge { limit: 999 });
        let wrong = "0".repeat(64);
        let err = cache.fetch(&source, Some(&wrong), 4096).await.unwrap_err();
        assert_eq!(err.code(), "checksum_mismatch");
        assert!(cache.get(&wrong).is_none());

        let got = cache.fetch(&source, Some(&sha), 4096).await.unwrap();
        assert_eq!((got.sha256.as_str(), got.size), (sha.as_str(), 1000));
        std::fs::remove_file(&src).unwrap();
        let again = cache.fetch(&source, Some(&sha), 4096).await.unwrap();
        assert_eq!(again, got, "served from the cache once the source is gone");
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path().join("packages"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".partial"))
            .collect();
        assert!(leftovers.is_empty(), "failed downloads are cleaned up");
    }

    #[actix_rt::test]
    async fn files_are_read_only_from_the_allowed_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let allowed = tmp.path().join("packages-in");
        let elsewhere = tmp.path().join("private");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        let secret = elsewhere.join("secret");
        std::fs::write(&secret, b"not a package").unwrap();
        let inside = allowed.join("pkg.tar.gz");
        std::fs::write(&inside, vec![7u8; 100]).unwrap();
        let not_allowed = |err: FetchError| {
            assert_eq!(err.code(), "path_not_allowed", "{err}");
            err.to_string()
        };

        // None allowed by default: not even opened.
        let closed = PackageCache::open(&tmp.path().join("cache-a"), PackageDirs::default()).unwrap();
        let why = not_allowed(
            closed
                .fetch(&PackageSource::File(inside.clone()), None, 4096)
                .await
                .unwrap_err(),
        );
        assert!(why.contains("--package-dir"), "{why}");

        let open = PackageCache::open(
            &tmp.path().join("cache-b"),
            PackageDirs::new(std::slice::from_ref(&allowed)).unwrap(),
        )
        .unwrap();
        assert!(open.fetch(&PackageSource::File(inside), None, 4096).await.is_ok());
        // Outside, by `..`, and by a symbolic link placed inside.
        for path in [secret.clone(), allowed.join("../private/secret")] {
            not_allowed(open.fetch(&PackageSource::File(path), None, 4096).await.unwrap_err());
        }
        let link = allowed.join("link.tar.gz");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        not_allowed(open.fetch(&PackageSource::File(link), None, 4096).await.unwrap_err());
        assert!(PackageDirs::new(&[tmp.path().join("missing")]).is_err());
    }
}
