//! The function's code package: `bootstrap.zip`, holding the host's
//! `bootstrap` binary, written by `infra package` (or `cargo lambda build
//! --release --output-format zip`, which puts it at the same place).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail, ensure};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// Where `cargo lambda build --release --output-format zip` puts the zip.
pub const DEFAULT_ZIP: &str = "target/lambda/bootstrap/bootstrap.zip";

/// The largest zip Lambda accepts in a direct upload.
const MAX_DIRECT_UPLOAD: usize = 50 * 1024 * 1024;

/// A checked code package.
#[derive(Clone)]
pub struct CodePackage {
    /// Where it was read from.
    pub path: PathBuf,
    /// The zip bytes.
    pub bytes: Vec<u8>,
    /// base64 of its sha256, as Lambda reports it (`CodeSha256`).
    pub sha256: String,
}

impl std::fmt::Debug for CodePackage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodePackage")
            .field("path", &self.path)
            .field("len", &self.bytes.len())
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl CodePackage {
    /// Reads and checks the zip at `path`: it must exist, be a zip, hold a
    /// `bootstrap` entry at its root, and fit a direct upload.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "the function package {} does not exist: build it with \
                 `cargo run -p infra -- package`, or pass --zip PATH",
                path.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
        };
        Self::from_bytes(path, bytes)
    }

    /// Checks `bytes` as a package read from `path`.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> anyhow::Result<Self> {
        ensure!(
            bytes.len() <= MAX_DIRECT_UPLOAD,
            "{} is {} MiB; Lambda takes at most 50 MiB in a direct upload",
            path.display(),
            bytes.len() / (1024 * 1024)
        );
        let entries = zip_entry_names(&bytes)
            .with_context(|| format!("{} is not a valid zip file", path.display()))?;
        ensure!(
            entries.iter().any(|name| name == "bootstrap"),
            "{} has no `bootstrap` file at its root (it has: {}); a provided.al2023 \
             function runs the executable named bootstrap",
            path.display(),
            entries.join(", ")
        );
        let sha256 = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&bytes));
        Ok(Self {
            path: path.to_owned(),
            bytes,
            sha256,
        })
    }
}

/// The glibc of Amazon Linux 2023, which the `provided.al2023` runtime runs.
pub const AL2023_GLIBC: (u32, u32) = (2, 34);

/// What `package` made.
#[derive(Debug, Clone)]
pub struct Packaged {
    /// The zip written.
    pub zip: PathBuf,
    /// Its size in bytes.
    pub zip_bytes: u64,
    /// The size of `bootstrap` in it.
    pub binary_bytes: u64,
    /// The newest glibc symbol version `bootstrap` needs.
    pub max_glibc: Option<(u32, u32)>,
}

/// Zips `binary` as `bootstrap` (mode 0755, deflated) into `out`, after
/// checking that it can run on Lambda as `arch` with `provided.al2023`:
/// an ELF executable for that machine whose glibc symbol versions are all
/// at most [`AL2023_GLIBC`]. A binary built on a machine with a newer glibc
/// usually still qualifies (Rust's std and the crates here use old
/// symbols); when it does not, this says which version it needs instead of
/// letting the function fail at its first cold start.
pub fn package(binary: &Path, out: &Path, arch: crate::Arch) -> anyhow::Result<Packaged> {
    use std::io::Write as _;
    let bytes =
        std::fs::read(binary).with_context(|| format!("failed to read {}", binary.display()))?;
    let info = crate::elf::inspect(&bytes)
        .with_context(|| format!("{} is not a Linux executable", binary.display()))?;
    let machine = match arch {
        crate::Arch::X86_64 => crate::elf::EM_X86_64,
        crate::Arch::Arm64 => crate::elf::EM_AARCH64,
    };
    ensure!(
        info.machine == machine,
        "{} is not an {arch} executable (ELF machine {}); build it for the function's architecture",
        binary.display(),
        info.machine
    );
    ensure!(info.executable, "{} is not an executable", binary.display());
    if let Some((major, minor)) = info.max_glibc() {
        ensure!(
            (major, minor) <= AL2023_GLIBC,
            "{} needs glibc {major}.{minor}, but provided.al2023 has {}.{}: build it on an \
             older system, or with `cargo lambda build --release` (zig pins the glibc)",
            binary.display(),
            AL2023_GLIBC.0,
            AL2023_GLIBC.1
        );
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
    }
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o755);
    zip.start_file("bootstrap", options)?;
    zip.write_all(&bytes)?;
    let zipped = zip.finish()?.into_inner();
    // Checked as deploy will check it.
    CodePackage::from_bytes(out, zipped.clone())?;
    let tmp = out.with_extension("zip.tmp");
    std::fs::write(&tmp, &zipped).with_context(|| format!("failed to write {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("failed to write {}", out.display()))?;
    Ok(Packaged {
        zip: out.to_owned(),
        zip_bytes: zipped.len() as u64,
        binary_bytes: bytes.len() as u64,
        max_glibc: info.max_glibc(),
    })
}

/// The names in a zip's central directory.
fn zip_entry_names(zip: &[u8]) -> anyhow::Result<Vec<String>> {
    const EOCD: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
    const CENTRAL: [u8; 4] = [0x50, 0x4b, 0x01, 0x02];
    let u16_at = |at: usize| -> anyhow::Result<usize> {
        let b = zip.get(at..at + 2).context("truncated")?;
        Ok(usize::from(u16::from_le_bytes([b[0], b[1]])))
    };
    let u32_at = |at: usize| -> anyhow::Result<usize> {
        let b = zip.get(at..at + 4).context("truncated")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    ensure!(zip.starts_with(b"PK"), "no zip signature");
    // The end-of-central-directory record is 22 bytes plus a comment of up to 64 KiB.
    let search_from = zip.len().saturating_sub(22 + 0xffff);
    let eocd = (search_from..=zip.len().saturating_sub(22))
        .rev()
        .find(|&i| zip[i..i + 4] == EOCD)
        .context("no end of central directory")?;
    let count = u16_at(eocd + 10)?;
    let mut at = u32_at(eocd + 16)?;
    let mut names = Vec::with_capacity(count);
    for _ in 0..count {
        ensure!(
            zip.get(at..at + 4) == Some(&CENTRAL[..]),
            "corrupt central directory"
        );
        let name_len = u16_at(at + 28)?;
        let extra_len = u16_at(at + 30)?;
        let comment_len = u16_at(at + 32)?;
        let name = zip.get(at + 46..at + 46 + name_len).context("truncated")?;
        names.push(String::from_utf8_lossy(name).into_owned());
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-entry stored zip, written by hand (the format is small).
    fn stored_zip(name: &str, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let crc = 0u32; // not checked by the reader under test
        let local = |out: &mut Vec<u8>| {
            out.extend_from_slice(&[0x50, 0x4b, 0x03, 0x04, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(&crc.to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
        };
        local(&mut out);
        let central_at = out.len();
        out.extend_from_slice(&[0x50, 0x4b, 0x01, 0x02, 20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0; 8]); // extra, comment, disk, internal attributes
        out.extend_from_slice(&0o100755u32.wrapping_shl(16).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // local header offset
        out.extend_from_slice(name.as_bytes());
        let central_len = out.len() - central_at;
        out.extend_from_slice(&[0x50, 0x4b, 0x05, 0x06, 0, 0, 0, 0, 1, 0, 1, 0]);
        out.extend_from_slice(&(central_len as u32).to_le_bytes());
        out.extend_from_slice(&(central_at as u32).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    #[test]
    fn a_zip_with_bootstrap_is_accepted() {
        let zip = stored_zip("bootstrap", b"#!/bin/sh\n");
        let package = CodePackage::from_bytes(Path::new("x.zip"), zip).unwrap();
        assert_eq!(package.sha256.len(), 44);
    }

    #[test]
    fn a_zip_without_bootstrap_is_refused() {
        let zip = stored_zip("target/bootstrap", b"x");
        let err = CodePackage::from_bytes(Path::new("x.zip"), zip).unwrap_err();
        assert!(
            format!("{err:#}").contains("no `bootstrap` file"),
            "{err:#}"
        );
        let err = CodePackage::from_bytes(Path::new("x.zip"), b"not a zip".to_vec()).unwrap_err();
        assert!(format!("{err:#}").contains("not a valid zip"), "{err:#}");
    }

    #[test]
    fn a_missing_zip_says_how_to_build_it() {
        let err = CodePackage::read(Path::new("/nonexistent/bootstrap.zip")).unwrap_err();
        assert!(err.to_string().contains("infra -- package"), "{err}");
    }
}
