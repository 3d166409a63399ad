//! The initramfs shim: a newc cpio archive appended to the profile initramfs.
//!
//! The kernel unpacks concatenated archives in order (later entries win), so the
//! user's initramfs stays byte-for-byte unchanged and the shim only adds
//! `/.provium/*` plus the test's injected files.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Where the agent sits in the guest; the kernel runs it as `rdinit`.
pub const AGENT_PATH: &str = "/.provium/agent";
/// A text file holding the init the agent chains to, or `none`.
pub const INIT_PATH: &str = "/.provium/init";
/// The directory holding the kernel modules the agent loads.
pub const MODULES_DIR: &str = "/.provium/modules";
/// Absolute guest paths of the modules to load, one per line, dependencies first.
pub const MODULES_ORDER_PATH: &str = "/.provium/modules.order";
/// The same for a VM on a host network: its NIC drivers, loaded only then.
pub const NET_MODULES_ORDER_PATH: &str = "/.provium/modules-net.order";
/// A VM's NICs on host networks, one per line: `MAC ADDRESS/PREFIX MTU`.
pub const NET_CONFIG_PATH: &str = "/.provium/net";

const NEWC_MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// Writes a newc ("070701") cpio archive: directories, regular files and symlinks.
///
/// Parent directories of every entry are emitted first (mode 0755) when the
/// archive has not already created them, because the kernel's unpacker does not
/// create missing parents.
pub struct CpioWriter<W: Write> {
    out: W,
    offset: u64,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            offset: 0,
            next_ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    /// Adds a directory (and its parents).
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let name = archive_name(path)?;
        self.parents(&name)?;
        if self.dirs.insert(name.clone()) {
            self.entry(&name, S_IFDIR | (mode & 0o7777), 2, &[])?;
        }
        Ok(())
    }

    /// Adds a regular file with `mode` permission bits (and its parent directories).
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let name = archive_name(path)?;
        self.parents(&name)?;
        self.entry(&name, S_IFREG | (mode & 0o7777), 1, data)
    }

    /// Adds a symlink at `path` pointing to `target` (and its parent directories).
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let name = archive_name(path)?;
        self.parents(&name)?;
        self.entry(&name, S_IFLNK | 0o777, 1, target.as_bytes())
    }

    /// Writes the `TRAILER!!!` entry and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry(TRAILER, 0, 1, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn parents(&mut self, name: &str) -> io::Result<()> {
        let mut end = 0;
        while let Some(slash) = name[end..].find('/') {
            end += slash;
            let parent = &name[..end];
            if self.dirs.insert(parent.to_string()) {
                self.entry(parent, S_IFDIR | 0o755, 2, &[])?;
            }
            end += 1;
        }
        Ok(())
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio entry {name} is larger than 4 GiB"),
            )
        })?;
        let ino = if name == TRAILER { 0 } else { self.next_ino };
        self.next_ino += 1;
        let namesize = name.len() as u32 + 1;
        let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, namesize, 0];
        let mut header = Vec::with_capacity(110 + name.len() + 4);
        header.extend_from_slice(NEWC_MAGIC);
        for field in fields {
            header.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        self.write_padded(&header)?;
        self.write_padded(data)
    }

    fn write_padded(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        let pad = (4 - (self.offset % 4) as usize) % 4;
        self.out.write_all(&[0u8; 3][..pad])?;
        self.offset += pad as u64;
        Ok(())
    }
}

/// Archive names are relative ("bin/sh"), without `.`/`..` or empty components.
fn archive_name(path: &str) -> io::Result<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid guest path {path:?}: must be absolute and without . or .."),
        ));
    }
    Ok(parts.join("/"))
}

/// A kernel module to place in the shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimModule {
    /// Module name (`virtio_pci`); the guest file is `/.provium/modules/<name>.ko`.
    pub name: String,
    /// The uncompressed module image.
    pub data: Vec<u8>,
}

/// A host file the test injects at a guest path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedFile {
    pub guest_path: String,
    pub host_path: PathBuf,
}

/// Errors building the shim or the combined initrd.
#[derive(Debug, Error)]
pub enum ShimError {
    #[error("profile '{profile}': initrd {path} is not a cpio archive (uncompressed, gzip, zstd, xz or lz4); found leading bytes {magic}")]
    NotCpio {
        profile: String,
        path: PathBuf,
        magic: String,
    },
    #[error("profile '{profile}': cannot read initrd {path}: {source}")]
    ReadInitrd {
        profile: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot read file {host_path} to inject at guest path {guest_path}: {source}")]
    ReadInjected {
        guest_path: String,
        host_path: PathBuf,
        source: io::Error,
    },
    #[error("invalid guest path {guest_path:?} in files: {source}")]
    GuestPath {
        guest_path: String,
        source: io::Error,
    },
    #[error("cannot write initrd {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// The fixed part of the shim: agent, init choice, the modules the agent loads, and
/// those it loads only for a VM on a host network (`net_modules`; one already in
/// `modules` is not repeated).
pub fn base_shim(
    agent: &[u8],
    init: &str,
    modules: &[ShimModule],
    net_modules: &[ShimModule],
) -> Vec<u8> {
    let mut cpio = CpioWriter::new(Vec::new());
    // Writing to a Vec cannot fail and every path here is a valid constant.
    let result = (|| -> io::Result<Vec<u8>> {
        cpio.file(AGENT_PATH, 0o755, agent)?;
        cpio.file(INIT_PATH, 0o644, format!("{init}\n").as_bytes())?;
        for (list, path) in [
            (modules, MODULES_ORDER_PATH),
            (net_modules, NET_MODULES_ORDER_PATH),
        ] {
            let mut order = String::new();
            for module in list {
                let guest = format!("{MODULES_DIR}/{}.ko", module.name);
                let placed =
                    path == NET_MODULES_ORDER_PATH && modules.iter().any(|m| m.name == module.name);
                if !placed {
                    cpio.file(&guest, 0o644, &module.data)?;
                }
                order.push_str(&guest);
                order.push('\n');
            }
            if path == MODULES_ORDER_PATH || !order.is_empty() {
                cpio.file(path, 0o644, order.as_bytes())?;
            }
        }
        cpio.finish()
    })();
    result.expect("in-memory cpio with constant paths")
}

/// The per-boot part of the shim: the test's injected files, or `None` when there are none.
pub fn files_shim(files: &[InjectedFile]) -> Result<Option<Vec<u8>>, ShimError> {
    if files.is_empty() {
        return Ok(None);
    }
    let mut cpio = CpioWriter::new(Vec::new());
    for file in files {
        let data = fs::read(&file.host_path).map_err(|source| ShimError::ReadInjected {
            guest_path: file.guest_path.clone(),
            host_path: file.host_path.clone(),
            source,
        })?;
        let mode = file_mode(&file.host_path);
        cpio.file(&file.guest_path, mode, &data)
            .map_err(|source| ShimError::GuestPath {
                guest_path: file.guest_path.clone(),
                source,
            })?;
    }
    Ok(Some(cpio.finish().expect("in-memory cpio")))
}

/// Keeps the host file's permission bits so injected scripts stay executable.
fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644)
}

/// The initramfs formats the kernel can unpack that Provium accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitrdFormat {
    Cpio,
    Gzip,
    Zstd,
    Xz,
    Lz4,
}

/// Recognises an initramfs by its leading bytes.
pub fn detect_format(head: &[u8]) -> Option<InitrdFormat> {
    if head.starts_with(b"070701") || head.starts_with(b"070702") {
        Some(InitrdFormat::Cpio)
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Some(InitrdFormat::Gzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(InitrdFormat::Zstd)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Some(InitrdFormat::Xz)
    } else if head.starts_with(&[0x02, 0x21, 0x4c, 0x18]) {
        Some(InitrdFormat::Lz4)
    } else {
        None
    }
}

/// Reads a profile's initrd and checks that the kernel can unpack it.
pub fn read_initrd(profile: &str, path: &Path) -> Result<Vec<u8>, ShimError> {
    let data = fs::read(path).map_err(|source| ShimError::ReadInitrd {
        profile: profile.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    if detect_format(&data).is_none() {
        let magic = data
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        return Err(ShimError::NotCpio {
            profile: profile.to_string(),
            path: path.to_path_buf(),
            magic: if magic.is_empty() {
                "(empty file)".to_string()
            } else {
                magic
            },
        });
    }
    Ok(data)
}

/// Writes `parts` one after another into `dest`, each starting on a 4-byte
/// boundary: the kernel only recognises an uncompressed cpio header at an offset
/// that is a multiple of 4 and skips the zero padding between archives.
pub fn write_concatenated(dest: &Path, parts: &[&[u8]]) -> Result<(), ShimError> {
    let write_err = |source| ShimError::Write {
        path: dest.to_path_buf(),
        source,
    };
    let mut out = io::BufWriter::new(fs::File::create(dest).map_err(write_err)?);
    let mut offset = 0usize;
    for part in parts {
        let pad = (4 - offset % 4) % 4;
        out.write_all(&[0u8; 3][..pad]).map_err(write_err)?;
        out.write_all(part).map_err(write_err)?;
        offset += pad + part.len();
    }
    out.flush().map_err(write_err)?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One parsed newc entry.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Entry {
        pub name: String,
        pub mode: u32,
        pub data: Vec<u8>,
    }

    /// A strict newc reader, independent of the writer, checking alignment.
    pub(crate) fn parse(mut buf: &[u8]) -> Vec<Entry> {
        let mut entries = Vec::new();
        let total = buf.len();
        loop {
            let offset = total - buf.len();
            assert_eq!(offset % 4, 0, "header at unaligned offset {offset}");
            assert_eq!(&buf[..6], b"070701", "bad magic at {offset}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&buf[6 + i * 8..14 + i * 8]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let mode = field(1);
            let size = field(6) as usize;
            let namesize = field(11) as usize;
            let name_end = 110 + namesize;
            assert_eq!(buf[name_end - 1], 0, "name not NUL-terminated");
            let name = String::from_utf8(buf[110..name_end - 1].to_vec()).unwrap();
            let data_start = name_end.div_ceil(4) * 4;
            let data = buf[data_start..data_start + size].to_vec();
            let next = (data_start + size).div_ceil(4) * 4;
            buf = &buf[next..];
            if name == TRAILER {
                assert!(buf.is_empty(), "bytes after trailer");
                return entries;
            }
            entries.push(Entry { name, mode, data });
        }
    }

    #[test]
    fn writer_round_trips_dirs_files_and_symlinks() {
        let mut cpio = CpioWriter::new(Vec::new());
        cpio.dir("/tmp", 0o1777).unwrap();
        cpio.file("/a/b/c.txt", 0o600, b"hello").unwrap();
        cpio.symlink("/a/link", "b/c.txt").unwrap();
        cpio.file("/a/b/empty", 0o644, b"").unwrap();
        let bytes = cpio.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let entries = parse(&bytes);
        let summary: Vec<(&str, u32)> = entries.iter().map(|e| (e.name.as_str(), e.mode)).collect();
        assert_eq!(
            summary,
            vec![
                ("tmp", 0o041777),
                ("a", 0o040755),
                ("a/b", 0o040755),
                ("a/b/c.txt", 0o100600),
                ("a/link", 0o120777),
                ("a/b/empty", 0o100644),
            ]
        );
        assert_eq!(entries[3].data, b"hello");
        assert_eq!(entries[4].data, b"b/c.txt");
    }

    #[test]
    fn writer_rejects_dot_dot_and_empty_paths() {
        let mut cpio = CpioWriter::new(Vec::new());
        assert!(cpio.file("/a/../etc/passwd", 0o644, b"x").is_err());
        assert!(cpio.file("/", 0o644, b"x").is_err());
    }

    #[test]
    fn base_shim_holds_agent_init_and_ordered_modules() {
        let modules = vec![
            ShimModule {
                name: "virtio_ring".into(),
                data: b"ring".to_vec(),
            },
            ShimModule {
                name: "virtio".into(),
                data: b"core".to_vec(),
            },
        ];
        let net = vec![
            ShimModule {
                name: "virtio".into(),
                data: b"core".to_vec(),
            },
            ShimModule {
                name: "virtio_net".into(),
                data: b"net".to_vec(),
            },
        ];
        let entries = parse(&base_shim(b"\x7fELFagent", "/sbin/init", &modules, &net));
        let find = |name: &str| entries.iter().find(|e| e.name == name).unwrap();
        assert_eq!(find(".provium/agent").mode, 0o100755);
        assert_eq!(find(".provium/agent").data, b"\x7fELFagent");
        assert_eq!(find(".provium/init").data, b"/sbin/init\n");
        assert_eq!(find(".provium/modules/virtio.ko").data, b"core");
        assert_eq!(
            find(".provium/modules.order").data,
            b"/.provium/modules/virtio_ring.ko\n/.provium/modules/virtio.ko\n"
        );
        // The net list names its dependencies too, but each module is there once.
        assert_eq!(find(".provium/modules/virtio_net.ko").data, b"net");
        assert_eq!(
            entries
                .iter()
                .filter(|e| e.name == ".provium/modules/virtio.ko")
                .count(),
            1
        );
        assert_eq!(
            find(".provium/modules-net.order").data,
            b"/.provium/modules/virtio.ko\n/.provium/modules/virtio_net.ko\n"
        );
    }

    #[test]
    fn files_shim_places_host_files_at_guest_paths() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("payload.bin");
        fs::write(&host, [0u8, 1, 2, 255]).unwrap();
        let files = vec![InjectedFile {
            guest_path: "/opt/test/payload.bin".into(),
            host_path: host,
        }];
        let entries = parse(&files_shim(&files).unwrap().unwrap());
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["opt", "opt/test", "opt/test/payload.bin"]);
        assert_eq!(entries[2].data, [0u8, 1, 2, 255]);
        assert!(files_shim(&[]).unwrap().is_none());
    }

    #[test]
    fn missing_injected_file_names_both_paths() {
        let files = vec![InjectedFile {
            guest_path: "/x".into(),
            host_path: "/nonexistent/provium/file".into(),
        }];
        let message = files_shim(&files).unwrap_err().to_string();
        assert!(message.contains("/nonexistent/provium/file"), "{message}");
        assert!(message.contains("/x"), "{message}");
    }

    #[test]
    fn initrd_validation_accepts_known_magics_and_names_profile() {
        assert_eq!(detect_format(b"070701000"), Some(InitrdFormat::Cpio));
        assert_eq!(detect_format(&[0x1f, 0x8b, 8]), Some(InitrdFormat::Gzip));
        assert_eq!(
            detect_format(&[0x28, 0xb5, 0x2f, 0xfd]),
            Some(InitrdFormat::Zstd)
        );
        assert_eq!(detect_format(b"\xfd7zXZ\x00"), Some(InitrdFormat::Xz));
        assert_eq!(
            detect_format(&[0x02, 0x21, 0x4c, 0x18]),
            Some(InitrdFormat::Lz4)
        );
        let dir = tempfile::tempdir().unwrap();
        let bogus = dir.path().join("rootfs.img");
        fs::write(&bogus, b"not an archive").unwrap();
        let message = read_initrd("minimal", &bogus).unwrap_err().to_string();
        assert!(message.contains("profile 'minimal'"), "{message}");
        assert!(message.contains("rootfs.img"), "{message}");
        assert!(message.contains("6e 6f 74"), "{message}");
    }

    #[test]
    fn concatenation_aligns_each_part_to_four_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("initrd");
        let second = CpioWriter::new(Vec::new()).finish().unwrap();
        write_concatenated(&dest, &[b"\x1f\x8b\x08zz", &second]).unwrap();
        let bytes = fs::read(&dest).unwrap();
        assert_eq!(&bytes[..5], b"\x1f\x8b\x08zz");
        assert_eq!(&bytes[5..8], [0, 0, 0]);
        assert!(parse(&bytes[8..]).is_empty());
    }
}
