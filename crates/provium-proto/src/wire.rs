//! Little-endian field encoding shared by every message; every length is checked
//! against the remaining input before anything is allocated.

use crate::error::ProtoError;

pub(crate) struct Writer {
    pub(crate) out: Vec<u8>,
}

impl Writer {
    /// A writer appending to `out` (which may hold a frame header still to be filled).
    pub(crate) fn after(mut out: Vec<u8>, tag: u8) -> Self {
        out.push(tag);
        Writer { out }
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }

    pub(crate) fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn i32(&mut self, v: i32) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn i64(&mut self, v: i64) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn len(&mut self, n: usize) -> &mut Self {
        // Payloads are capped far below 4 GiB, so a length that does not fit is a
        // programming error, caught by the frame size check before sending.
        self.u32(u32::try_from(n).unwrap_or(u32::MAX))
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.len(v.len());
        self.out.extend_from_slice(v);
        self
    }

    pub(crate) fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    pub(crate) fn opt_bytes(&mut self, v: Option<&[u8]>) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(b) => self.u8(1).bytes(b),
        }
    }

    pub(crate) fn opt_u32(&mut self, v: Option<u32>) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(n) => self.u8(1).u32(n),
        }
    }
}

pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtoError> {
        let have = self.data.len() - self.pos;
        if n > have {
            return Err(ProtoError::Truncated {
                what,
                need: n as u64,
                have: have as u64,
            });
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, ProtoError> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn bool(&mut self, what: &'static str) -> Result<bool, ProtoError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(ProtoError::UnknownTag { what, tag }),
        }
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, ProtoError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, ProtoError> {
        Ok(self.u32(what)? as i32)
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, ProtoError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub(crate) fn i64(&mut self, what: &'static str) -> Result<i64, ProtoError> {
        Ok(self.u64(what)? as i64)
    }

    pub(crate) fn bytes(&mut self, what: &'static str) -> Result<Vec<u8>, ProtoError> {
        let n = self.u32(what)? as usize;
        Ok(self.take(n, what)?.to_vec())
    }

    pub(crate) fn string(&mut self, what: &'static str) -> Result<String, ProtoError> {
        String::from_utf8(self.bytes(what)?).map_err(|_| ProtoError::InvalidUtf8 { what })
    }

    pub(crate) fn opt_bytes(&mut self, what: &'static str) -> Result<Option<Vec<u8>>, ProtoError> {
        if self.bool(what)? {
            Ok(Some(self.bytes(what)?))
        } else {
            Ok(None)
        }
    }

    pub(crate) fn opt_u32(&mut self, what: &'static str) -> Result<Option<u32>, ProtoError> {
        if self.bool(what)? {
            Ok(Some(self.u32(what)?))
        } else {
            Ok(None)
        }
    }

    /// Reads a list count; each element takes at least `min_item` bytes, so a count the
    /// remaining input cannot hold is refused before the list is allocated.
    pub(crate) fn count(
        &mut self,
        what: &'static str,
        min_item: usize,
    ) -> Result<usize, ProtoError> {
        let n = self.u32(what)? as usize;
        let need = n.saturating_mul(min_item);
        if need > self.remaining() {
            return Err(ProtoError::Truncated {
                what,
                need: need as u64,
                have: self.remaining() as u64,
            });
        }
        Ok(n)
    }

    pub(crate) fn finish(self) -> Result<(), ProtoError> {
        if self.pos != self.data.len() {
            return Err(ProtoError::TrailingBytes {
                extra: (self.data.len() - self.pos) as u64,
            });
        }
        Ok(())
    }
}
