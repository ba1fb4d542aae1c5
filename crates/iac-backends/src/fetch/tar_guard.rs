//! [`TarGuard`]: a streaming `Read` adapter between the decompressor and `tar::Archive` that
//! follows the tar stream's 512-byte header blocks itself and refuses oversized metadata
//! entries *before* the `tar` crate buffers them.
//!
//! Why: the `tar` crate reads a GNU long-name (`L`) or long-link (`K`) entry, and a pax
//! extended header (`x`, and `g` once the extractor asks for its records), whole into memory.
//! Without this guard the only bound was the decompressed-stream cap (~1 GB by default): an
//! 826 KB gzip holding an 850 MB long name took the process to 4.2 GB resident.
//!
//! Caps (each applies per entry; the `tar` crate keeps at most one `L`, one `K` and one `x`
//! pending for the member they describe and frees them once it is yielded, so per-entry caps
//! bound its memory — a per-archive total would refuse ordinary pax archives from GNU tar,
//! which carry one `x` header per file):
//! - `L` / `K` data: at most [`MAX_LONG_NAME`] (4 KiB; Linux's `PATH_MAX` is 4096);
//! - `x` / `g` data: at most [`MAX_PAX_HEADER`] (64 KiB).
//!
//! The block walk mirrors the `tar` crate exactly, using its own header parsing: sizes in octal
//! or base-256 (`Header::entry_size`), a pax `size=` record of a recognised (ustar/GNU magic)
//! `x` header overriding the size of the next member, and GNU sparse members whose extension
//! blocks (`isextended`) sit between the header and the data. Headers are assembled in an
//! internal block and checked before any byte of them reaches the `tar` crate; data passes
//! through unchanged (only an `x` header's data, at most 64 KiB, is copied to read its `size`).
//!
//! A refusal is an `io::Error` carrying [`HeaderTooLarge`], which names the entry (for `L`/`K`
//! by the first [`NAME_SHOWN`] characters of the long name itself, peeked from the stream, else
//! by the header's name field) and the cap; the extractor turns it into `FetchError::Unsafe`.

use std::io::{self, Read};

/// Cap on the data of one GNU long-name (`L`) or long-link (`K`) entry, in bytes.
pub const MAX_LONG_NAME: u64 = 4096;
/// Cap on the data of one pax extended header (`x` or `g`), in bytes.
pub const MAX_PAX_HEADER: u64 = 64 * 1024;
/// Characters of an entry's name shown in a refusal (the rest is cut and marked).
pub const NAME_SHOWN: usize = 200;

const BLOCK: usize = 512;

/// A metadata entry over its cap, refused before its data was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderTooLarge {
    /// What kind of metadata (`GNU long-name`, `pax extended header`, …).
    pub kind: &'static str,
    /// The entry's name, cut to [`NAME_SHOWN`] characters (unescaped; shown with `{:?}`).
    pub entry: String,
    /// The size the header declares.
    pub size: u64,
    /// The cap it exceeds.
    pub cap: u64,
}

impl std::fmt::Display for HeaderTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} entry {:?} declares {} bytes; the cap is {} bytes (refused before reading it)",
            self.kind, self.entry, self.size, self.cap
        )
    }
}

impl std::error::Error for HeaderTooLarge {}

/// Passes a tar stream through unchanged while checking every header block (see the module doc).
pub struct TarGuard<R> {
    inner: R,
    /// The block being assembled or served (a header or a GNU sparse extension block).
    block: [u8; BLOCK],
    filled: usize,
    served: usize,
    /// Data (with padding) still to pass through before the next header block.
    data_left: u64,
    /// Data of a recognised `x` header being copied (it holds the next member's `size=`).
    capture: Option<(Vec<u8>, u64)>,
    /// `size=` of the pending pax header, applied to the next member.
    pax_size: Option<u64>,
    /// The next blocks are GNU sparse extension blocks; the member's data follows them.
    sparse_data: Option<u64>,
}

impl<R: Read> TarGuard<R> {
    /// A guard over the tar stream `inner`, nothing read yet.
    pub fn new(inner: R) -> Self {
        TarGuard {
            inner,
            block: [0; BLOCK],
            filled: 0,
            served: 0,
            data_left: 0,
            capture: None,
            pax_size: None,
            sparse_data: None,
        }
    }

    /// The wrapped reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Reads the next block into `self.block`; fewer than 512 bytes only at the end of input.
    fn assemble(&mut self) -> io::Result<()> {
        self.filled = 0;
        self.served = 0;
        while self.filled < BLOCK {
            match self.inner.read(&mut self.block[self.filled..]) {
                Ok(0) => break,
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Checks a complete block and sets up what follows it.
    fn inspect(&mut self) -> io::Result<()> {
        if let Some((data, _)) = self.capture.take() {
            // The `x` header's data has passed: its `size=` applies to the next member, as in
            // the `tar` crate (an unparsable record set means no override there too).
            self.pax_size = pax_size(&data);
        }
        if let Some(data) = self.sparse_data {
            // A GNU sparse extension block: another one follows while `isextended` is 1.
            if self.block[504] != 1 {
                self.sparse_data = None;
                self.data_left = data;
            }
            return Ok(());
        }
        if self.block.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let header = tar::Header::from_byte_slice(&self.block);
        let kind = header.entry_type();
        let recognized = header.as_gnu().is_some() || header.as_ustar().is_some();
        let long = kind.is_gnu_longname() || kind.is_gnu_longlink();
        let pax = kind.is_pax_local_extensions() || kind.is_pax_global_extensions();
        let mut size = header
            .entry_size()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("tar header: {e}")))?;
        if !(long || pax)
            && let Some(p) = self.pax_size
        {
            size = p;
        }
        // A recognised L/K/x describes the next member and keeps the pending pax header; any
        // other header is a member and consumes it.
        if !(recognized && (long || kind.is_pax_local_extensions())) {
            self.pax_size = None;
        }
        if long && size > MAX_LONG_NAME {
            let shown = self.peek_name()?;
            let what = if kind.is_gnu_longname() {
                "GNU long-name"
            } else {
                "GNU long-link"
            };
            return Err(too_large(what, shown, size, MAX_LONG_NAME));
        }
        if pax && size > MAX_PAX_HEADER {
            let name = String::from_utf8_lossy(&header.path_bytes()).into_owned();
            let what = if kind.is_pax_local_extensions() {
                "pax extended header"
            } else {
                "pax global header"
            };
            return Err(too_large(what, cut(&name), size, MAX_PAX_HEADER));
        }
        if recognized && kind.is_pax_local_extensions() {
            self.capture = Some((Vec::with_capacity(size as usize), size));
        }
        let padded = size
            .checked_add(BLOCK as u64 - 1)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "tar entry size overflow"))?
            & !(BLOCK as u64 - 1);
        match header.as_gnu() {
            Some(gnu) if kind.is_gnu_sparse() && gnu.is_extended() => {
                self.sparse_data = Some(padded);
            }
            _ => self.data_left = padded,
        }
        Ok(())
    }

    /// The first [`NAME_SHOWN`] characters of the long name whose header was just read (up to
    /// its NUL), read from the stream without handing them on: the stream fails right after.
    fn peek_name(&mut self) -> io::Result<String> {
        let mut buf = vec![0u8; NAME_SHOWN * 4];
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let bytes = &buf[..got];
        let bytes = &bytes[..bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len())];
        Ok(cut(&String::from_utf8_lossy(bytes)))
    }
}

/// `name` cut to [`NAME_SHOWN`] characters, marked when cut.
fn cut(name: &str) -> String {
    match name.char_indices().nth(NAME_SHOWN) {
        Some((i, _)) => format!("{}…(cut)", &name[..i]),
        None => name.to_string(),
    }
}

fn too_large(kind: &'static str, entry: String, size: u64, cap: u64) -> io::Error {
    io::Error::other(HeaderTooLarge {
        kind,
        entry,
        size,
        cap,
    })
}

/// The `size` record of pax extension data, as the `tar` crate reads it.
fn pax_size(data: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(data) {
        let ext = ext.ok()?;
        if ext.key() == Ok("size") {
            return ext.value().ok()?.parse().ok();
        }
    }
    None
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.served < self.filled {
                let n = out.len().min(self.filled - self.served);
                out[..n].copy_from_slice(&self.block[self.served..self.served + n]);
                self.served += n;
                return Ok(n);
            }
            if self.data_left > 0 {
                let max = out
                    .len()
                    .min(self.data_left.min(usize::MAX as u64) as usize);
                let n = self.inner.read(&mut out[..max])?;
                if n == 0 {
                    return Ok(0);
                }
                self.data_left -= n as u64;
                if let Some((data, want)) = &mut self.capture {
                    let keep = (*want as usize).saturating_sub(data.len()).min(n);
                    data.extend_from_slice(&out[..keep]);
                }
                return Ok(n);
            }
            // At a block boundary: the next header (or sparse extension) block.
            let complete_before = self.filled == BLOCK;
            if !complete_before && self.filled > 0 {
                // A short block was the end of the input: nothing more follows.
                return Ok(0);
            }
            self.assemble()?;
            match self.filled {
                0 => return Ok(0),
                BLOCK => self.inspect()?,
                // A truncated block is handed on as is; the `tar` crate reports the short read.
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
