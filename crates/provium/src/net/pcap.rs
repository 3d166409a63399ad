//! Classic libpcap capture files (microsecond timestamps, `LINKTYPE_ETHERNET`), the
//! format `tcpdump -r` and Wireshark read everywhere.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The classic format's magic; written little-endian, readers detect the byte order.
const MAGIC_MICROSECONDS: u32 = 0xa1b2_c3d4;
const VERSION_MAJOR: u16 = 2;
const VERSION_MINOR: u16 = 4;
/// Frames are recorded whole; no frame the switch reads is longer.
const SNAPLEN: u32 = 262_144;
const LINKTYPE_ETHERNET: u32 = 1;

/// An open capture file. Write errors are kept (the first one) and reported when the
/// capture is closed, so the switch thread never stops over a full disk.
#[derive(Debug)]
pub(crate) struct PcapWriter {
    path: PathBuf,
    out: BufWriter<File>,
    unflushed: bool,
    error: Option<io::Error>,
}

impl PcapWriter {
    /// Creates (truncates) `path` and writes the global header.
    pub(crate) fn create(path: &Path) -> io::Result<PcapWriter> {
        let mut out = BufWriter::with_capacity(256 * 1024, File::create(path)?);
        let mut header = Vec::with_capacity(24);
        header.extend_from_slice(&MAGIC_MICROSECONDS.to_le_bytes());
        header.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
        header.extend_from_slice(&VERSION_MINOR.to_le_bytes());
        header.extend_from_slice(&0i32.to_le_bytes()); // thiszone: UTC
        header.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
        header.extend_from_slice(&SNAPLEN.to_le_bytes());
        header.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        out.write_all(&header)?;
        out.flush()?;
        Ok(PcapWriter {
            path: path.to_path_buf(),
            out,
            unflushed: false,
            error: None,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one frame seen at `at`.
    pub(crate) fn record(&mut self, at: SystemTime, frame: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let captured = frame.len().min(SNAPLEN as usize);
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&(since_epoch.as_secs() as u32).to_le_bytes());
        header[4..8].copy_from_slice(&since_epoch.subsec_micros().to_le_bytes());
        header[8..12].copy_from_slice(&(captured as u32).to_le_bytes());
        header[12..16].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        let written = self
            .out
            .write_all(&header)
            .and_then(|()| self.out.write_all(&frame[..captured]));
        self.unflushed = true;
        if let Err(e) = written {
            self.error = Some(e);
        }
    }

    /// Pushes buffered records to the file if there are any.
    pub(crate) fn flush_if_needed(&mut self) {
        if self.unflushed && self.error.is_none() {
            self.unflushed = false;
            if let Err(e) = self.out.flush() {
                self.error = Some(e);
            }
        }
    }

    /// Flushes and closes, returning the first error the capture met.
    pub(crate) fn finish(mut self) -> io::Result<PathBuf> {
        self.flush_if_needed();
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(self.path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn header_and_records_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.pcap");
        let mut writer = PcapWriter::create(&path).unwrap();
        let at = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        writer.record(at, &[1, 2, 3]);
        assert_eq!(writer.finish().unwrap(), path);
        let bytes = std::fs::read(&path).unwrap();
        let expected: Vec<u8> = [
            &[0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0][..],
            &[0; 8],
            &262_144u32.to_le_bytes(),
            &1u32.to_le_bytes(),
            &1_700_000_000u32.to_le_bytes(),
            &123_456u32.to_le_bytes(),
            &3u32.to_le_bytes(),
            &3u32.to_le_bytes(),
            &[1, 2, 3],
        ]
        .concat();
        assert_eq!(bytes, expected);
    }
}
