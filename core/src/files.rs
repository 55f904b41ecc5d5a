//! Files other processes (or this one after a crash) read: written whole or not at all.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Writes `path` through `body` so that a reader sees the old file or the whole new one, never
/// a part: a temporary file beside it (created with `mode`, buffered), fsync, rename, fsync of
/// the folder. Ready files are read the moment they appear, and state files after a crash.
///
/// The temporary file is always a new file (`O_CREAT|O_EXCL`): a leftover one is removed first,
/// and anything planted at its name meanwhile (a symlink to another file, a file with a wider
/// mode) makes the write fail rather than write through it. So a key gets exactly `mode`.
pub fn write_atomically(
    path: &Path,
    mode: u32,
    body: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    let written = (|| {
        let mut w = BufWriter::with_capacity(1 << 16, f);
        body(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// [`write_atomically`] of `bytes`.
pub fn write_bytes_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_atomically(path, mode, |w| w.write_all(bytes))
}

/// A stable 64-bit FNV-1a fingerprint of `bytes` (table versions; not cryptographic).
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_symlink_planted_at_the_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let key = dir.path().join("a-key.pem");
        std::os::unix::fs::symlink(&victim, dir.path().join("a-key.pem.tmp")).unwrap();
        write_bytes_atomically(&key, b"SECRET", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "SECRET");
        assert_eq!(mode(&key), 0o600);
        assert!(!dir.path().join("a-key.pem.tmp").exists());
    }

    #[test]
    fn a_key_gets_its_mode_even_over_a_leftover_temporary_file_with_a_wider_mode() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("a-key.pem");
        let tmp = dir.path().join("a-key.pem.tmp");
        std::fs::write(&tmp, "old").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
        write_bytes_atomically(&key, b"SECRET", 0o600).unwrap();
        assert_eq!(mode(&key), 0o600);
    }
}

/// Largest config file read (bytes).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest route file read (bytes).
pub const MAX_ROUTE_FILE_BYTES: u64 = 16 << 20;

/// Reads a text file of at most `max` bytes; a larger one is refused without being read whole.
pub fn read_text(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("is larger than {max} bytes, the most accepted"),
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod bounded_tests {
    use super::*;

    #[test]
    fn a_file_over_the_limit_is_refused_and_one_at_it_is_read() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("f.toml");
        std::fs::write(&p, "x".repeat(11)).unwrap_or_else(|e| panic!("{e}"));
        let e = read_text(&p, 10).expect_err("11 bytes over a limit of 10");
        assert!(e.to_string().contains("larger than 10 bytes"), "{e}");
        assert_eq!(read_text(&p, 11).map(|t| t.len()).ok(), Some(11));
    }
}
