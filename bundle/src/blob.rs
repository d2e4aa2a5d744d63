//! A bundle's files one by one, as content-addressed blobs: a file's digest is the sha256 and the
//! size of its contents; on the wire each blob is one zstd frame, and whoever receives one checks
//! what it decompresses to against the digest it was named by before keeping it. A digest a sender
//! computed is a claim, never a proof.

use std::io::{self, Read, Write};
use std::path::Path;

use crate::BundleError;
use crate::digest::Sha256Writer;

/// The level blobs are compressed at: bundles' archives used the same.
pub const COMPRESSION_LEVEL: i32 = 3;

/// The largest window a frame may make its decoder hold: 8 MiB (2^23). A frame may ask for up to
/// 2 GiB; level 3 never asks for more than this, so a frame that does is refused instead of
/// costing the receiver that much memory per blob in flight.
pub const WINDOW_LOG_MAX: u32 = 23;

/// What names a blob: its contents' sha256 and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlobDigest {
    pub sha256: [u8; 32],
    pub size: u64,
}

impl BlobDigest {
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

impl std::fmt::Display for BlobDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.sha256_hex(), self.size)
    }
}

/// The digest of a file's contents.
pub fn hash_file(path: &Path) -> Result<BlobDigest, BundleError> {
    let mut file = std::fs::File::open(path).map_err(BundleError::io("failed to open", path))?;
    let mut hashing = Sha256Writer::new(io::sink());
    io::copy(&mut file, &mut hashing).map_err(BundleError::io("failed to read", path))?;
    Ok(digest_of(hashing))
}

fn digest_of<W: Write>(hashing: Sha256Writer<W>) -> BlobDigest {
    let (hex, size, _) = hashing.finish();
    let mut sha256 = [0u8; 32];
    hex::decode_to_slice(&hex, &mut sha256).expect("a sha256 in hex is 32 bytes");
    BlobDigest { sha256, size }
}

/// Compresses everything `reader` gives into `writer` as one zstd frame, and returns the digest
/// of what was read: the sender compares it with the digest it announced, so a file that changed
/// while it was being sent is caught on its side too.
pub fn compress(reader: impl Read, writer: impl Write) -> io::Result<BlobDigest> {
    let mut encoder = zstd::stream::write::Encoder::new(writer, COMPRESSION_LEVEL)?;
    let mut reading = HashingReader {
        inner: reader,
        hashing: Sha256Writer::new(io::sink()),
    };
    io::copy(&mut reading, &mut encoder)?;
    encoder.finish()?;
    Ok(digest_of(reading.hashing))
}

struct HashingReader<R> {
    inner: R,
    hashing: Sha256Writer<io::Sink>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hashing.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Takes a blob's compressed bytes as they arrive, writes its contents to the inner writer, and on
/// [`finish`](Self::finish) says whether they are what `expected` names. It never writes more than
/// the expected size (a frame that decompresses to more is refused as it does), and refuses frames
/// that ask for a window beyond [`WINDOW_LOG_MAX`]. Whatever it refuses, the caller throws away
/// what was written.
pub struct VerifyingDecoder<W: Write> {
    expected: BlobDigest,
    decoder: zstd::stream::write::Decoder<'static, Bounded<W>>,
}

impl<W: Write> VerifyingDecoder<W> {
    pub fn new(expected: BlobDigest, inner: W) -> io::Result<Self> {
        let bounded = Bounded {
            hashing: Sha256Writer::new(inner),
            left: expected.size,
        };
        let mut decoder = zstd::stream::write::Decoder::new(bounded)?;
        decoder.window_log_max(WINDOW_LOG_MAX)?;
        Ok(VerifyingDecoder { expected, decoder })
    }

    /// The contents written, checked: the inner writer back if they are what was expected.
    pub fn finish(self) -> Result<W, BundleError> {
        let expected = self.expected;
        let bounded = self.decoder.finish().map_err(|e| mismatch(expected, e))?;
        let (hex, size, inner) = bounded.hashing.finish();
        if size != expected.size || hex != expected.sha256_hex() {
            return Err(BundleError::DigestMismatch {
                expected: expected.to_string(),
                actual: format!("{hex}/{size}"),
            });
        }
        Ok(inner)
    }
}

fn mismatch(expected: BlobDigest, e: io::Error) -> BundleError {
    BundleError::DigestMismatch {
        expected: expected.to_string(),
        actual: format!("a frame that does not decode to it ({e})"),
    }
}

impl<W: Write> Write for VerifyingDecoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.decoder.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.decoder.flush()
    }
}

/// Passes on at most `left` bytes, hashing them; more is an error.
struct Bounded<W> {
    hashing: Sha256Writer<W>,
    left: u64,
}

impl<W: Write> Write for Bounded<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "it decompresses to more than its size",
            ));
        }
        let n = self.hashing.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.hashing.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(data: &[u8]) -> (BlobDigest, Vec<u8>) {
        let mut out = Vec::new();
        let digest = compress(data, &mut out).unwrap();
        (digest, out)
    }

    fn decode(expected: BlobDigest, frame: &[u8]) -> Result<Vec<u8>, BundleError> {
        let mut d = VerifyingDecoder::new(expected, Vec::new()).unwrap();
        // In small pieces, as a stream of chunks arrives.
        for piece in frame.chunks(1000) {
            if let Err(e) = d.write_all(piece) {
                return Err(mismatch(expected, e));
            }
        }
        d.finish()
    }

    #[test]
    fn a_file_compressed_decodes_to_itself_and_its_digest_is_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        std::fs::write(&path, &data).unwrap();
        let digest = hash_file(&path).unwrap();
        assert_eq!(digest.size, data.len() as u64);
        let (sent, bytes) = frame(&data);
        assert_eq!(sent, digest);
        assert!(bytes.len() < data.len() / 4, "{} bytes", bytes.len());
        assert_eq!(decode(digest, &bytes).unwrap(), data);
        // The empty file too.
        let (empty, bytes) = frame(b"");
        assert_eq!(empty.size, 0);
        assert_eq!(decode(empty, &bytes).unwrap(), b"");
        assert_eq!(
            digest.to_string(),
            format!("{}/{}", digest.sha256_hex(), data.len())
        );
    }

    #[test]
    fn contents_that_are_not_what_the_digest_names_are_refused() {
        let (digest, bytes) = frame(b"the real contents");
        let (other, _) = frame(b"other contents!!!");
        // Same size, another hash.
        assert!(matches!(
            decode(other, &bytes),
            Err(BundleError::DigestMismatch { .. })
        ));
        // A frame cut short.
        assert!(decode(digest, &bytes[..bytes.len() - 3]).is_err());
        // A byte flipped in the frame.
        let mut flipped = bytes.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x55;
        assert!(decode(digest, &flipped).is_err());
        // Not a frame at all.
        assert!(decode(digest, b"plain bytes, not zstd").is_err());
    }

    #[test]
    fn a_frame_that_decompresses_beyond_its_size_stops_at_it() {
        // A bomb: 64 MiB of zeros, announced as 10 bytes.
        let (big, bytes) = frame(&vec![0u8; 64 << 20]);
        assert!(bytes.len() < 64 << 10);
        let small = BlobDigest { size: 10, ..big };
        let mut d = VerifyingDecoder::new(small, Vec::new()).unwrap();
        let err = match d.write_all(&bytes) {
            Err(e) => e.to_string(),
            Ok(()) => d.finish().unwrap_err().to_string(),
        };
        assert!(err.contains("more than its size"), "{err}");
    }

    #[test]
    fn a_frame_asking_for_a_huge_window_is_refused() {
        let data = vec![7u8; 1 << 20];
        let mut out = Vec::new();
        let mut encoder = zstd::stream::write::Encoder::new(&mut out, 19).unwrap();
        encoder.window_log(27).unwrap();
        encoder.long_distance_matching(true).unwrap();
        encoder.write_all(&data).unwrap();
        encoder.finish().unwrap();
        let mut hashing = Sha256Writer::new(io::sink());
        hashing.write_all(&data).unwrap();
        let digest = digest_of(hashing);
        assert!(decode(digest, &out).is_err());
    }
}
