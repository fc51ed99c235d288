//! The node's data dir must be its own. The node keeps its API token, its
//! cluster key, the operator keys it trusts and the modules it runs there,
//! and it runs as root on most hosts: a directory that another user owns, or
//! may write to, lets that user plant a token of their choosing, a trusted
//! key, or a symbolic link that makes the node overwrite a file elsewhere.
//!
//! So at start the node refuses, with a clear error, a data dir that is not
//! a directory owned by its own user, or that group or others may write to,
//! and the same for every entry in it and in its subdirectories (the module
//! store, the package cache, the trusted operator keys). A symbolic link
//! there is refused too: the node writes only files of its own. It never
//! changes someone else's directory into use; a directory of its own that
//! others may only read is made private (0700), as it always was.
//!
//! Only two levels are checked: the data dir's entries and theirs. Below
//! that lie the files of installed modules, which a running module may
//! write as it likes; the node reads its own records there without
//! following links.

use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// How deep [`claim`] looks: the data dir's entries, and their entries.
const DEPTH: usize = 2;

/// Why a data dir was refused.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot use data dir {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a directory; give --data-dir a directory of the node's own")]
    NotADirectory { path: PathBuf },
    #[error(
        "{path} is owned by uid {owner}, not by this node's user (uid {me}): another user could plant files the node trusts; give the node a directory of its own"
    )]
    Owner { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "{path} has mode {mode:04o}: group or others may write there and plant files the node trusts; check what is in it, then `chmod go-w` it"
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error(
        "{path} is a symbolic link: the node writes only files of its own in its data dir, and never follows a link there; remove it"
    )]
    Link { path: PathBuf },
}

/// Makes `dir` if it is missing (0700), or checks that it, and what it
/// holds, belong to this node's user alone. See the module doc.
pub fn claim(dir: &Path) -> Result<(), DataDirError> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    // The data dir itself may be reached through a link the operator made
    // (`/var/lib/conjoiner` → `/data/conjoiner`): what counts is the
    // directory it names.
    let meta = std::fs::metadata(dir).map_err(io(dir))?;
    if !meta.is_dir() {
        return Err(DataDirError::NotADirectory { path: dir.into() });
    }
    let me = effective_uid();
    check_owner_and_mode(dir, &meta, me)?;
    check_entries(dir, me, DEPTH)?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    Ok(())
}

/// The umask the agent was started with, kept for the processes of its
/// modules (see [`keep_files_private`]); `u32::MAX` until then.
static INHERITED_UMASK: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(u32::MAX);

/// Makes every file and directory the agent creates from now on its own
/// alone (umask 077). Under a umask of 000, the folders the node made in
/// its data dir were writable by anyone, and the next start refused the
/// data dir. The umask the agent was started with is kept for its
/// modules' processes ([`inherited_umask`]): what they create is theirs
/// to decide. For the agent's process only: it is process-wide.
pub fn keep_files_private() {
    // SAFETY: umask only swaps the process's file mode mask.
    let inherited = unsafe { libc::umask(0o077) };
    INHERITED_UMASK.store(inherited, std::sync::atomic::Ordering::Relaxed);
}

/// The umask the agent was started with, for a module's process to run
/// under, if [`keep_files_private`] changed the agent's own.
pub fn inherited_umask() -> Option<libc::mode_t> {
    match INHERITED_UMASK.load(std::sync::atomic::Ordering::Relaxed) {
        u32::MAX => None,
        mask => Some(mask),
    }
}

/// An I/O failure on `path`, as a [`DataDirError`].
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError {
    let path = path.to_path_buf();
    move |source| DataDirError::Io { path, source }
}

fn check_entries(dir: &Path, me: u32, depth: usize) -> Result<(), DataDirError> {
    if depth == 0 {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if meta.file_type().is_symlink() {
            return Err(DataDirError::Link { path });
        }
        check_owner_and_mode(&path, &meta, me)?;
        if meta.is_dir() {
            check_entries(&path, me, depth - 1)?;
        }
    }
    Ok(())
}

fn check_owner_and_mode(path: &Path, meta: &std::fs::Metadata, me: u32) -> Result<(), DataDirError> {
    if meta.uid() != me {
        return Err(DataDirError::Owner {
            path: path.into(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(DataDirError::Writable {
            path: path.into(),
            mode,
        });
    }
    Ok(())
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn private_tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_missing_dir_is_made_private_and_a_readable_one_of_its_own_is_made_private() {
        let tmp = private_tempdir();
        let fresh = tmp.path().join("a/b");
        claim(&fresh).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o700);

        let readable = tmp.path().join("readable");
        std::fs::create_dir(&readable).unwrap();
        set_mode(&readable, 0o755);
        std::fs::write(readable.join("api.token"), "x").unwrap();
        set_mode(&readable.join("api.token"), 0o600);
        claim(&readable).unwrap();
        assert_eq!(
            std::fs::metadata(&readable).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn a_dir_others_may_write_is_refused_and_left_as_it_was() {
        let tmp = private_tempdir();
        let dir = tmp.path().join("open");
        std::fs::create_dir(&dir).unwrap();
        set_mode(&dir, 0o777);
        let e = claim(&dir).unwrap_err();
        assert!(matches!(e, DataDirError::Writable { mode: 0o777, .. }), "{e}");
        assert!(e.to_string().contains("chmod go-w"), "{e}");
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o777);
    }

    #[test]
    fn a_module_store_others_may_write_is_refused() {
        let tmp = private_tempdir();
        let mods = tmp.path().join("mods");
        std::fs::create_dir(&mods).unwrap();
        set_mode(&mods, 0o777);
        let e = claim(tmp.path()).unwrap_err();
        assert!(
            matches!(&e, DataDirError::Writable { path, .. } if *path == mods),
            "{e}"
        );
    }

    #[test]
    fn a_link_planted_where_the_node_writes_is_refused_and_its_target_untouched() {
        let tmp = private_tempdir();
        let dir = tmp.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        symlink(&victim, dir.join("http.addr")).unwrap();
        let e = claim(&dir).unwrap_err();
        assert!(matches!(e, DataDirError::Link { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }

    #[test]
    fn a_file_or_dir_of_another_user_is_refused() {
        if effective_uid() != 0 {
            // Only root can give a file away; CI runs as root.
            eprintln!("skipped: needs root to chown");
            return;
        }
        let tmp = private_tempdir();
        let dir = tmp.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        let token = dir.join("api.token");
        std::fs::write(&token, "planted-token-planted-token").unwrap();
        set_mode(&token, 0o600);
        std::os::unix::fs::chown(&token, Some(65534), Some(65534)).unwrap();
        let e = claim(&dir).unwrap_err();
        assert!(matches!(e, DataDirError::Owner { owner: 65534, .. }), "{e}");

        std::fs::remove_file(&token).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        set_mode(&dir, 0o700);
        let e = claim(&dir).unwrap_err();
        assert!(matches!(e, DataDirError::Owner { owner: 65534, .. }), "{e}");
        assert_eq!(
            std::fs::metadata(&dir).unwrap().uid(),
            65534,
            "someone else's directory is never taken over"
        );
    }

    #[test]
    fn a_file_in_place_of_the_dir_is_refused() {
        let tmp = private_tempdir();
        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(claim(&file).unwrap_err(), DataDirError::NotADirectory { .. }));
    }
}
