//! sha256 digests of bundle bytes, as lowercase hex.

use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::BundleError;

/// A writer that hashes everything passing through it.
pub struct Sha256Writer<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Sha256Writer<W> {
    pub fn new(inner: W) -> Self {
        Sha256Writer {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The hex digest and the byte count of everything written, and the inner writer.
    pub fn finish(self) -> (String, u64, W) {
        (
            hex::encode(self.hasher.finalize()),
            self.written,
            self.inner,
        )
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The hex sha256 of a file's contents.
pub fn digest_file(path: &Path) -> Result<String, BundleError> {
    let mut f =
        std::fs::File::open(path).map_err(BundleError::io("failed to open bundle", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(BundleError::io("failed to read bundle", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
