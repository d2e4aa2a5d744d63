//! Bundle extraction: whatever the archive holds, nothing is written outside the target dir, and
//! the limits hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use testfleet_bundle::{ExtractLimits, digest_file, extract};

const MAX_BYTES: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let root = tempfile::tempdir().unwrap();
    let archive = root.path().join("bundle.tar.zst");
    // Half the inputs as they are, half zstd-compressed: the fuzzer then also reaches the tar layer.
    let bytes = if data.first().is_some_and(|b| b & 1 == 0) {
        zstd_frame(&data[1..])
    } else {
        data.to_vec()
    };
    std::fs::write(&archive, &bytes).unwrap();
    let digest = digest_file(&archive).unwrap();
    let dest = root.path().join("out/dest");
    let limits = ExtractLimits {
        max_unpacked_bytes: MAX_BYTES,
        max_entries: 64,
    };
    let _ = extract(&archive, &digest, &dest, limits);
    // Only the archive and the extraction dir's parent exist at the root, and the parent holds
    // only the extraction dir.
    let mut names: Vec<String> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names == ["bundle.tar.zst"] || names == ["bundle.tar.zst", "out"],
        "{names:?}"
    );
    if names.len() == 2 {
        for e in std::fs::read_dir(root.path().join("out")).unwrap() {
            assert_eq!(e.unwrap().file_name(), "dest");
        }
    }
    assert!(
        size_of(&dest) <= MAX_BYTES + 1,
        "the unpacked-size limit was passed"
    );
});

/// `data` as one zstd frame of stored (raw) blocks: no compressor needed in the fuzzer.
fn zstd_frame(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 0x00];
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(64 * 1024).collect()
    };
    for (i, c) in chunks.iter().enumerate() {
        let last = u32::from(i + 1 == chunks.len());
        let header = last | ((c.len() as u32) << 3); // block type 0: raw
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(c);
    }
    out
}

fn size_of(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => size_of(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}
