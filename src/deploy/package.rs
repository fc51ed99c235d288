//! Module packages: a gzip'd tar with `mod.json` at its root.
//!
//! [`build`] makes one from a folder, the same bytes for the same files (so
//! the same folder gives the same sha256). [`unpack`] opens one into a
//! staging folder and refuses anything that could escape it or surprise the
//! node: absolute paths, `..`, links, devices, and archives that grow past a
//! limit when decompressed.

use super::disk::WriteError;
use super::manifest::{Manifest, MANIFEST_FILE, MAX_MANIFEST_BYTES};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

/// The default largest package (compressed).
pub const DEFAULT_MAX_PACKAGE_BYTES: u64 = 64 * 1024 * 1024;

/// Limits on what a package may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    /// Total bytes of all files once unpacked (stops gzip bombs).
    pub max_unpacked_bytes: u64,
    pub max_entries: usize,
}

impl UnpackLimits {
    /// Unpacked content may be at most four times the package size limit.
    pub fn for_package_limit(max_package_bytes: u64) -> UnpackLimits {
        UnpackLimits {
            max_unpacked_bytes: max_package_bytes.saturating_mul(4),
            max_entries: 10_000,
        }
    }
}

/// The sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Is `s` a sha256 in lowercase or uppercase hex? Answers it in lowercase.
pub fn parse_sha256(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!("`{s}` is not a sha256: expected 64 hex digits"))
    }
}

/// Builds a package from `dir` into `out`: checks `mod.json` (and that its
/// `main` is an executable file in the folder), then writes every regular
/// file and folder in name order with fixed owners and times. Symlinks and
/// special files in the folder are an error rather than silently skipped.
/// Answers the manifest and the package's sha256.
pub fn build(dir: &Path, out: &Path) -> Result<(Manifest, String), String> {
    let manifest = Manifest::read_from(dir)?;
    if let Some(main) = &manifest.main {
        check_executable(&dir.join(main)).map_err(|e| format!("{MANIFEST_FILE}: `main` {e}"))?;
    }
    let mut entries = Vec::new();
    collect(dir, Path::new(""), &mut entries)?;
    let file = File::create(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let mut tar = tar::Builder::new(GzEncoder::new(file, flate2::Compression::default()));
    tar.mode(tar::HeaderMode::Deterministic);
    for (relative, is_dir) in &entries {
        let full = dir.join(relative);
        let result = if *is_dir {
            tar.append_dir(relative, &full)
        } else {
            tar.append_path_with_name(&full, relative)
        };
        result.map_err(|e| format!("cannot add {} to the package: {e}", full.display()))?;
    }
    let gz = tar
        .into_inner()
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    let mut file = gz
        .finish()
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    file.flush()
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    let sha = sha256_file(out).map_err(|e| format!("cannot read back {}: {e}", out.display()))?;
    Ok((manifest, sha))
}

/// Lists `dir` recursively, sorted, as (relative path, is a folder).
fn collect(root: &Path, relative: &Path, out: &mut Vec<(PathBuf, bool)>) -> Result<(), String> {
    let dir = root.join(relative);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in names {
        let rel = relative.join(&name);
        let meta =
            std::fs::symlink_metadata(root.join(&rel)).map_err(|e| format!("cannot read {}: {e}", rel.display()))?;
        if meta.is_dir() {
            out.push((rel.clone(), true));
            collect(root, &rel, out)?;
        } else if meta.is_file() {
            out.push((rel, false));
        } else {
            return Err(format!(
                "{} is a symlink or special file; packages hold only regular files and folders",
                rel.display()
            ));
        }
    }
    Ok(())
}

fn check_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path).map_err(|_| format!("names {} but it is not there", path.display()))?;
    if !meta.is_file() {
        return Err(format!("names {} but it is not a regular file", path.display()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "names {} but it is not executable (chmod +x it)",
            path.display()
        ));
    }
    Ok(())
}

/// Unpacks the package at `package` into `dest` (which must not exist yet),
/// refusing unsafe entries, then reads and checks its `mod.json`. On any
/// error `dest` may hold a partial tree; the caller removes it.
/// Why a package could not be unpacked: the package's fault, or a full disk.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum UnpackError {
    #[error("{0}")]
    Package(String),
    #[error("the disk is full: {0}")]
    DiskFull(String),
}

impl From<String> for UnpackError {
    fn from(why: String) -> Self {
        UnpackError::Package(why)
    }
}

/// `what` failed with `e` while unpacking: a full disk is named, anything
/// else counts against the package as before (a corrupt entry reads as an
/// I/O error too).
fn unpack_error(what: String, e: io::Error) -> UnpackError {
    match WriteError::new(what, &e) {
        WriteError::DiskFull(m) => UnpackError::DiskFull(m),
        WriteError::Failed(m) => UnpackError::Package(m),
    }
}

pub fn unpack(package: &Path, dest: &Path, limits: UnpackLimits) -> Result<Manifest, UnpackError> {
    std::fs::create_dir(dest).map_err(|e| unpack_error(format!("cannot create {}", dest.display()), e))?;
    let file = File::open(package).map_err(|e| format!("cannot open the package: {e}"))?;
    let mut archive = tar::Archive::new(GzDecoder::new(file));
    let mut unpacked: u64 = 0;
    let mut count = 0usize;
    let entries = archive
        .entries()
        .map_err(|e| format!("the package is not a gzip'd tar: {e}"))?
        .raw(true);
    let mut long_path: Option<PathBuf> = None;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("the package is not a valid gzip'd tar: {e}"))?;
        count += 1;
        if count > limits.max_entries {
            return Err(UnpackError::from(format!(
                "the package has more than {} entries",
                limits.max_entries
            )));
        }
        if let Some(path) = read_extension(&mut entry)? {
            // Extensions count towards the unpacked total like files do.
            unpacked = unpacked.saturating_add(entry.size());
            if unpacked > limits.max_unpacked_bytes {
                return Err(UnpackError::from(format!(
                    "the package unpacks to more than {} bytes (a compression bomb?)",
                    limits.max_unpacked_bytes
                )));
            }
            long_path = path.or(long_path);
            continue;
        }
        let path = match long_path.take() {
            Some(path) => path,
            None => entry
                .path()
                .map_err(|e| format!("the package has an entry with an unreadable path: {e}"))?
                .into_owned(),
        };
        let shown = path.display().to_string();
        let relative = safe_relative(&path)?;
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {
                if let Some(rel) = relative {
                    std::fs::create_dir_all(dest.join(rel))
                        .map_err(|e| unpack_error(format!("cannot create {shown}"), e))?;
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let Some(rel) = relative else {
                    return Err(UnpackError::from(format!(
                        "the package has a file entry without a name (`{shown}`)"
                    )));
                };
                let size = entry.header().size().unwrap_or(u64::MAX);
                unpacked = unpacked.saturating_add(size);
                if unpacked > limits.max_unpacked_bytes {
                    return Err(UnpackError::from(format!(
                        "the package unpacks to more than {} bytes (a compression bomb?)",
                        limits.max_unpacked_bytes
                    )));
                }
                let target = dest.join(&rel);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| unpack_error(format!("cannot create {shown}"), e))?;
                }
                let mode = entry.header().mode().unwrap_or(0o644) & 0o755;
                write_file(&mut entry, &target, mode, size)
                    .map_err(|e| unpack_error(format!("cannot unpack {shown}"), e))?;
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                return Err(UnpackError::from(format!(
                    "the package has a link (`{shown}`); links are refused"
                )))
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                return Err(UnpackError::from(format!(
                    "the package has a device or fifo (`{shown}`); they are refused"
                )))
            }
            other => {
                return Err(UnpackError::from(format!(
                    "the package has an entry of unsupported type {other:?} (`{shown}`)"
                )))
            }
        }
    }
    let manifest = Manifest::read_from(dest)?;
    if let Some(main) = &manifest.main {
        check_executable(&dest.join(main)).map_err(|e| format!("{MANIFEST_FILE}: `main` {e}"))?;
    }
    Ok(manifest)
}

/// The most bytes of one header extension (a GNU long name or a PAX
/// header). The tar crate would read any size into memory: a 1 MB package
/// holding a 1 GiB long name took a node to 16.8 GB and wrote the name into
/// its log. Paths are at most 4 KiB on Linux; PAX records beyond a path are
/// small.
pub const MAX_EXTENSION_BYTES: u64 = 64 * 1024;

/// If `entry` is a header extension, reads it (within
/// [`MAX_EXTENSION_BYTES`]) and answers `Some(path it sets for the next
/// entry, if any)`; answers `None` for an ordinary entry. The archive is
/// read raw, so this is the only place extensions are read.
fn read_extension<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Option<Option<PathBuf>>, String> {
    use std::os::unix::ffi::OsStrExt;
    let kind = entry.header().entry_type();
    let what = match kind {
        tar::EntryType::GNULongName => "GNU long name",
        tar::EntryType::GNULongLink => "GNU long link name",
        tar::EntryType::XHeader => "PAX header",
        tar::EntryType::XGlobalHeader => "PAX global header",
        _ => return Ok(None),
    };
    let size = entry.header().size().unwrap_or(u64::MAX);
    if size > MAX_EXTENSION_BYTES {
        return Err(format!(
            "the package has a {what} of {size} bytes; at most {MAX_EXTENSION_BYTES} are accepted"
        ));
    }
    let mut data = Vec::with_capacity(size as usize);
    entry
        .take(MAX_EXTENSION_BYTES)
        .read_to_end(&mut data)
        .map_err(|e| format!("the package's {what} cannot be read: {e}"))?;
    let path = match kind {
        tar::EntryType::GNULongName => {
            let name = data.split(|b| *b == 0).next().unwrap_or_default();
            Some(PathBuf::from(std::ffi::OsStr::from_bytes(name)))
        }
        tar::EntryType::XHeader => {
            let mut path = None;
            for record in tar::PaxExtensions::new(&data) {
                let record = record.map_err(|e| format!("the package has a malformed {what}: {e}"))?;
                match record.key_bytes() {
                    b"path" => path = Some(PathBuf::from(std::ffi::OsStr::from_bytes(record.value_bytes()))),
                    // Sizes past the ustar header's 8 GiB are far past any
                    // package limit; refusing beats trusting two sizes.
                    b"size" => return Err(format!("the package has a {what} that overrides an entry's size")),
                    _ => {}
                }
            }
            path
        }
        // A long link name only precedes a link, which is refused anyway;
        // global PAX headers carry nothing a package needs.
        _ => None,
    };
    Ok(Some(path))
}

/// The entry's path without `./`, or an error for absolute paths and `..`.
/// `None` for the archive root itself.
fn safe_relative(path: &Path) -> Result<Option<PathBuf>, String> {
    let shown = path.display();
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!(
                    "the package has an entry leaving its folder with `..` (`{shown}`)"
                ))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("the package has an entry with an absolute path (`{shown}`)"))
            }
        }
    }
    Ok((!clean.as_os_str().is_empty()).then_some(clean))
}

fn write_file(reader: &mut impl Read, target: &Path, mode: u32, expected: u64) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(target)?;
    // Never trust the header's size more than the limit already checked.
    let copied = io::copy(&mut reader.take(expected), &mut file)?;
    if copied != expected {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the entry is truncated"));
    }
    Ok(())
}

/// The manifest of a package without unpacking it to disk (the CLI uses this
/// to name what it deploys).
pub fn read_manifest(package: &Path) -> Result<Manifest, String> {
    let file = File::open(package).map_err(|e| format!("cannot open {}: {e}", package.display()))?;
    let mut archive = tar::Archive::new(GzDecoder::new(file));
    let entries = archive
        .entries()
        .map_err(|e| format!("{} is not a gzip'd tar: {e}", package.display()))?
        .raw(true);
    let mut long_path: Option<PathBuf> = None;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("{} is not a valid gzip'd tar: {e}", package.display()))?;
        if let Some(path) = read_extension(&mut entry)? {
            long_path = path.or(long_path);
            continue;
        }
        let path = long_path.take().or_else(|| entry.path().ok().map(|p| p.into_owned()));
        let is_manifest = path
            .and_then(|p| safe_relative(&p).ok().flatten())
            .is_some_and(|p| p == Path::new(MANIFEST_FILE));
        if is_manifest {
            let mut bytes = Vec::new();
            entry
                .take(MAX_MANIFEST_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| format!("cannot read {MANIFEST_FILE}: {e}"))?;
            if bytes.len() as u64 > MAX_MANIFEST_BYTES {
                // Parsing the cut bytes said "EOF while parsing a string".
                return Err(format!("{MANIFEST_FILE} is larger than {MAX_MANIFEST_BYTES} bytes"));
            }
            return Manifest::parse(&bytes);
        }
    }
    Err(format!("{} has no {MANIFEST_FILE} at its root", package.display()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Writes a small valid module folder.
    pub fn module_dir(root: &Path, name: &str) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(
            dir.join(MANIFEST_FILE),
            format!(r#"{{"name":"{name}","version":"1.0.0","main":"bin/run"}}"#),
        )
        .unwrap();
        std::fs::write(dir.join("bin/run"), "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(dir.join("bin/run"), std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    /// Writes a tar.gz whose entries are made by `add`, bypassing the checks
    /// of `build` (to make hostile packages).
    pub fn raw_package(out: &Path, add: impl FnOnce(&mut tar::Builder<GzEncoder<File>>)) {
        let file = File::create(out).unwrap();
        let mut tar = tar::Builder::new(GzEncoder::new(file, flate2::Compression::fast()));
        add(&mut tar);
        tar.into_inner().unwrap().finish().unwrap();
    }

    /// Appends a regular file with a raw (unchecked) name.
    pub fn append_raw(tar: &mut tar::Builder<GzEncoder<File>>, name: &str, data: &[u8]) {
        let mut header = tar::Header::new_gnu();
        {
            let raw = header.as_old_mut();
            raw.name[..name.len()].copy_from_slice(name.as_bytes());
        }
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        tar.append(&header, data).unwrap();
    }

    const MANIFEST: &[u8] = br#"{"name":"m","version":"1","builtin":"echo"}"#;

    #[test]
    fn build_then_unpack_round_trips_and_is_deterministic() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = module_dir(tmp.path(), "demo");
        let (manifest, sha1) = build(&dir, &tmp.path().join("a.tar.gz")).unwrap();
        let (_, sha2) = build(&dir, &tmp.path().join("b.tar.gz")).unwrap();
        assert_eq!(manifest.name, "demo");
        assert_eq!(sha1, sha2, "the same folder gives the same package");
        assert_eq!(sha256_file(&tmp.path().join("a.tar.gz")).unwrap(), sha1);
        let out = tmp.path().join("out");
        let unpacked = unpack(
            &tmp.path().join("a.tar.gz"),
            &out,
            UnpackLimits::for_package_limit(1 << 20),
        )
        .unwrap();
        assert_eq!(unpacked, manifest);
        let mode = std::fs::metadata(out.join("bin/run")).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "executable bit survives");
        assert_eq!(read_manifest(&tmp.path().join("a.tar.gz")).unwrap().name, "demo");
    }

    #[test]
    fn build_refuses_a_folder_with_a_symlink_or_a_missing_main() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = module_dir(tmp.path(), "demo");
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
        assert!(build(&dir, &tmp.path().join("x.tar.gz"))
            .unwrap_err()
            .contains("symlink"));
        std::fs::remove_file(dir.join("link")).unwrap();
        std::fs::remove_file(dir.join("bin/run")).unwrap();
        assert!(build(&dir, &tmp.path().join("x.tar.gz"))
            .unwrap_err()
            .contains("not there"));
    }

    fn unpack_err(make: impl FnOnce(&mut tar::Builder<GzEncoder<File>>)) -> String {
        let tmp = tempfile::tempdir().unwrap();
        let pkg = tmp.path().join("p.tar.gz");
        raw_package(&pkg, make);
        unpack(&pkg, &tmp.path().join("out"), UnpackLimits::for_package_limit(1 << 20))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn hostile_entries_are_refused() {
        let err = unpack_err(|t| {
            append_raw(t, "mod.json", MANIFEST);
            append_raw(t, "../x", b"escape");
        });
        assert!(err.contains(".."), "{err}");
        let err = unpack_err(|t| append_raw(t, "/tmp/abs", b"abs"));
        assert!(err.contains("absolute"), "{err}");
        let err = unpack_err(|t| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            t.append_link(&mut h, "link", "/etc/passwd").unwrap();
        });
        assert!(err.contains("link"), "{err}");
        let err = unpack_err(|t| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Char);
            h.set_size(0);
            t.append_data(&mut h, "tty", io::empty()).unwrap();
        });
        assert!(err.contains("device"), "{err}");
        let err = unpack_err(|t| append_raw(t, "readme", b"no manifest"));
        assert!(err.contains("mod.json"), "{err}");
        let err = unpack_err(|t| append_raw(t, "mod.json", b"{\"name\":\"UP\"}"));
        assert!(err.contains("manifest"), "{err}");
    }

    #[test]
    fn a_compression_bomb_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let pkg = tmp.path().join("bomb.tar.gz");
        raw_package(&pkg, |t| {
            append_raw(t, "mod.json", MANIFEST);
            append_raw(t, "zeros", &vec![0u8; 2 << 20]);
        });
        assert!(std::fs::metadata(&pkg).unwrap().len() < 64 * 1024, "compresses well");
        let limits = UnpackLimits {
            max_unpacked_bytes: 1 << 20,
            max_entries: 100,
        };
        let err = unpack(&pkg, &tmp.path().join("out"), limits).unwrap_err().to_string();
        assert!(err.contains("compression bomb"), "{err}");
    }

    /// Appends a header extension of `kind` holding `data`.
    fn append_extension(tar: &mut tar::Builder<GzEncoder<File>>, kind: tar::EntryType, data: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(kind);
        header.set_cksum();
        tar.append(&header, data).unwrap();
    }

    #[test]
    fn long_paths_unpack_but_oversized_header_extensions_are_refused_unread() {
        // A path past ustar's 100 bytes travels as a GNU long name.
        let tmp = tempfile::tempdir().unwrap();
        let pkg = tmp.path().join("long.tar.gz");
        let long = format!("{}/data.txt", "d".repeat(150));
        raw_package(&pkg, |t| {
            append_raw(t, "mod.json", MANIFEST);
            let mut h = tar::Header::new_gnu();
            h.set_size(2);
            h.set_mode(0o644);
            t.append_data(&mut h, &long, &b"ok"[..]).unwrap();
        });
        let out = tmp.path().join("out");
        unpack(&pkg, &out, UnpackLimits::for_package_limit(1 << 20)).unwrap();
        assert_eq!(std::fs::read(out.join(&long)).unwrap(), b"ok");
        assert_eq!(read_manifest(&pkg).unwrap().name, "m");

        // The tar crate read any long name or PAX header into memory, and
        // the refusal then echoed the name (1 GiB of it, once, into a log).
        let huge = vec![b'a'; 100 * 1024];
        for kind in [tar::EntryType::GNULongName, tar::EntryType::XHeader] {
            let err = unpack_err(|t| {
                append_raw(t, "mod.json", MANIFEST);
                append_extension(t, kind, &huge);
                append_raw(t, "after", b"x");
            });
            assert!(err.contains("102400 bytes"), "{kind:?}: {}", &err[..err.len().min(300)]);
            assert!(err.len() < 300, "{kind:?}: the refusal echoes {} bytes", err.len());
            let tmp = tempfile::tempdir().unwrap();
            let pkg = tmp.path().join("p.tar.gz");
            raw_package(&pkg, |t| {
                append_extension(t, kind, &huge);
                append_raw(t, "mod.json", MANIFEST);
            });
            let err = read_manifest(&pkg).unwrap_err();
            assert!(err.len() < 300 && err.contains("102400 bytes"), "{kind:?}: {err:.300}");
        }

        // An over-large manifest is named as such, not as broken JSON.
        let tmp = tempfile::tempdir().unwrap();
        let pkg = tmp.path().join("big-manifest.tar.gz");
        let padded = format!(
            r#"{{"name":"m","version":"1","description":"{}"}}"#,
            "x".repeat(300 * 1024)
        );
        raw_package(&pkg, |t| append_raw(t, "mod.json", padded.as_bytes()));
        let err = read_manifest(&pkg).unwrap_err();
        assert!(err.contains("larger than"), "{err}");

        // A PAX header may rename an entry; the name it gives is checked.
        let err = unpack_err(|t| {
            append_raw(t, "mod.json", MANIFEST);
            append_extension(t, tar::EntryType::XHeader, b"22 path=../escaped.sh\n");
            append_raw(t, "innocent", b"x");
        });
        assert!(err.contains(".."), "{err}");
    }

    #[test]
    fn garbage_is_not_a_package() {
        let tmp = tempfile::tempdir().unwrap();
        let pkg = tmp.path().join("junk.tar.gz");
        std::fs::write(&pkg, b"this is not gzip").unwrap();
        let err = unpack(&pkg, &tmp.path().join("out"), UnpackLimits::for_package_limit(1 << 20))
            .unwrap_err()
            .to_string();
        assert!(err.contains("gzip"), "{err}");
    }

    #[test]
    fn sha256_is_parsed_strictly() {
        assert_eq!(parse_sha256(&"AB".repeat(32)).unwrap(), "ab".repeat(32));
        assert!(parse_sha256("abc").is_err());
        assert!(parse_sha256(&"zz".repeat(32)).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Archives of entries with any names (`..`, `/`, long ones), any
        /// entry type byte and any content: unpacking succeeds or fails,
        /// never panics, and writes nothing outside its staging folder.
        #[test]
        fn any_archive_unpacks_inside_its_folder_or_is_refused(
            entries in proptest::collection::vec(
                ("[a-z./]{1,40}", proptest::prelude::any::<u8>(), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)),
                0..8,
            ),
            with_manifest in proptest::prelude::any::<bool>(),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let package = tmp.path().join("p.tar.gz");
            raw_package(&package, |tar| {
                if with_manifest {
                    append_raw(tar, MANIFEST_FILE, MANIFEST);
                }
                for (name, kind, data) in &entries {
                    let mut header = tar::Header::new_gnu();
                    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
                    header.set_size(data.len() as u64);
                    header.set_mode(0o755);
                    header.set_entry_type(tar::EntryType::new(*kind));
                    header.set_cksum();
                    tar.append(&header, &data[..]).unwrap();
                }
            });
            let limits = UnpackLimits { max_unpacked_bytes: 1 << 20, max_entries: 64 };
            let _ = unpack(&package, &tmp.path().join("stage"), limits);
            for entry in std::fs::read_dir(tmp.path()).unwrap().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                proptest::prop_assert!(name == "p.tar.gz" || name == "stage", "wrote {name} outside the stage");
            }
        }
    }
}
