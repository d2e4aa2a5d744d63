//! The suite manifest parser: any text is either a manifest or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = testfleet_model::manifest::Manifest::parse(
            text,
            std::path::Path::new("testfleet.toml"),
        );
    }
});
