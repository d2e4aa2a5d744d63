//! A bundle of files' manifest, which a client sends and agents read: any bytes are a manifest or
//! an error, and an accepted manifest is canonical (written back byte for byte, the same as one
//! made from its entries), sorted, and within its limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use testfleet_bundle::manifest::{Manifest, ManifestLimits};

const LIMITS: ManifestLimits = ManifestLimits {
    max_entries: 64,
    max_total_bytes: 1 << 30,
    max_manifest_bytes: 1 << 20,
};

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = Manifest::parse(data, &LIMITS) else {
        return;
    };
    assert_eq!(
        manifest.to_bytes(),
        data,
        "an accepted manifest is canonical"
    );
    let entries = manifest.entries();
    assert!(entries.len() as u64 <= LIMITS.max_entries);
    assert!(manifest.total_bytes() <= LIMITS.max_total_bytes);
    assert!(
        entries
            .windows(2)
            .all(|w| w[0].path.as_bytes() < w[1].path.as_bytes()),
        "sorted, each path once"
    );
    for e in entries {
        assert!(
            !e.path.is_empty() && !e.path.starts_with('/'),
            "{:?}",
            e.path
        );
        assert!(
            e.path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."),
            "{:?}",
            e.path
        );
    }
    let rebuilt = Manifest::from_entries(entries.to_vec()).expect("its own entries are accepted");
    assert_eq!(rebuilt, manifest);
    assert_eq!(rebuilt.digest(), manifest.digest());
});
