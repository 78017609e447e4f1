//! Just enough of ELF to check a Lambda binary before it is packaged: its
//! machine, and the newest glibc symbol version it needs (from the
//! `.gnu.version_r` section, as `objdump -T` would show). Amazon Linux
//! 2023, the `provided.al2023` runtime, ships glibc 2.34: a binary that
//! needs a newer symbol fails at start-up there with "version `GLIBC_2.xx'
//! not found", which no test on a newer machine would notice.

use anyhow::{Context as _, ensure};

/// What the package needs to know about an executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// `e_machine`: 62 is x86_64, 183 is aarch64.
    pub machine: u16,
    /// Whether it is an executable (`ET_EXEC`, or `ET_DYN` with an
    /// interpreter, as a position-independent executable is).
    pub executable: bool,
    /// Every `GLIBC_x.y` version it requires, sorted, as (x, y).
    pub glibc: Vec<(u32, u32)>,
}

impl ElfInfo {
    /// The newest glibc version it requires.
    pub fn max_glibc(&self) -> Option<(u32, u32)> {
        self.glibc.last().copied()
    }
}

/// ELF machine number of x86_64.
pub const EM_X86_64: u16 = 62;
/// ELF machine number of aarch64.
pub const EM_AARCH64: u16 = 183;

const SHT_GNU_VERNEED: u32 = 0x6fff_fffe;
const PT_INTERP: u32 = 3;

/// Reads the header, program headers and version-needs of a 64-bit
/// little-endian ELF file.
pub fn inspect(bytes: &[u8]) -> anyhow::Result<ElfInfo> {
    ensure!(bytes.get(..4) == Some(b"\x7fELF"), "not an ELF file");
    ensure!(
        bytes.get(4) == Some(&2) && bytes.get(5) == Some(&1),
        "not a 64-bit little-endian ELF file"
    );
    let u16_at = |at: usize| -> anyhow::Result<u16> {
        let b = bytes.get(at..at + 2).context("truncated ELF file")?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| -> anyhow::Result<u32> {
        let b = bytes.get(at..at + 4).context("truncated ELF file")?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |at: usize| -> anyhow::Result<usize> {
        let b = bytes.get(at..at + 8).context("truncated ELF file")?;
        usize::try_from(u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .context("ELF offset out of range")
    };
    let kind = u16_at(16)?;
    let machine = u16_at(18)?;
    let phoff = u64_at(32)?;
    let shoff = u64_at(40)?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    let shentsize = usize::from(u16_at(58)?);
    let shnum = usize::from(u16_at(60)?);

    let mut interp = false;
    for i in 0..phnum {
        if u32_at(phoff + i * phentsize)? == PT_INTERP {
            interp = true;
        }
    }
    let executable = kind == 2 || (kind == 3 && interp);

    // Section headers: (type, offset, size, link).
    let section = |i: usize| -> anyhow::Result<(u32, usize, usize, usize)> {
        let at = shoff + i * shentsize;
        Ok((
            u32_at(at + 4)?,
            u64_at(at + 24)?,
            u64_at(at + 32)?,
            u32_at(at + 40)? as usize,
        ))
    };
    let mut glibc = Vec::new();
    for i in 0..shnum {
        let (kind, offset, _size, link) = section(i)?;
        if kind != SHT_GNU_VERNEED {
            continue;
        }
        let (_, strtab, strsize, _) = section(link)?;
        let string = |at: usize| -> anyhow::Result<&str> {
            ensure!(at < strsize, "bad string offset in the ELF file");
            let tail = bytes
                .get(strtab + at..strtab + strsize)
                .context("truncated")?;
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            std::str::from_utf8(&tail[..end]).context("bad string in the ELF file")
        };
        // Verneed entries, each with a chain of Vernaux entries.
        let mut need = offset;
        loop {
            let count = usize::from(u16_at(need + 2)?);
            let mut aux = need + u32_at(need + 8)? as usize;
            for _ in 0..count {
                let name = string(u32_at(aux + 8)? as usize)?;
                if let Some(version) = name.strip_prefix("GLIBC_")
                    && let Some((major, minor)) = version.split_once('.')
                    && let (Ok(major), Ok(minor)) = (
                        major.parse::<u32>(),
                        minor.split('.').next().unwrap_or("").parse::<u32>(),
                    )
                {
                    glibc.push((major, minor));
                }
                let next = u32_at(aux + 12)? as usize;
                if next == 0 {
                    break;
                }
                aux += next;
            }
            let next = u32_at(need + 12)? as usize;
            if next == 0 {
                break;
            }
            need += next;
        }
    }
    glibc.sort_unstable();
    glibc.dedup();
    Ok(ElfInfo {
        machine,
        executable,
        glibc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test binary is itself a glibc ELF executable for the build machine.
    #[test]
    fn reads_its_own_executable() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let info = inspect(&me).unwrap();
        #[cfg(target_arch = "x86_64")]
        assert_eq!(info.machine, EM_X86_64);
        assert!(info.executable);
        assert!(
            info.max_glibc().is_some_and(|(major, _)| major == 2),
            "{info:?}"
        );
        assert!(inspect(b"#!/bin/sh\n").is_err());
    }
}
