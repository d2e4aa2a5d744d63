//! Output capture: whatever a test prints, in whatever pieces, the kept output is the start and
//! the end of it, bounded by the cap, and the count of dropped bytes is exact.
#![no_main]

use libfuzzer_sys::fuzz_target;
use testfleet_agent::capture::Capture;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let cap = usize::from(u16::from_le_bytes([data[0], data[1]])) % 4096;
    let mut rest = &data[2..];
    let total = rest.len();
    let printed = rest.to_vec();
    let mut c = Capture::new(cap);
    // Piece sizes come from the data itself, so the fuzzer explores every way to split it.
    while !rest.is_empty() {
        let n = (usize::from(rest[0]) % 97 + 1).min(rest.len());
        c.push(&rest[..n]);
        rest = &rest[n..];
    }
    let (kept, omitted) = c.finish();
    let omitted = omitted as usize;
    if omitted == 0 {
        assert_eq!(
            kept, printed,
            "nothing dropped, so everything is kept as printed"
        );
        return;
    }
    let marker = format!("\n[testfleet: {omitted} bytes of output omitted]\n");
    let head = cap / 2;
    let tail = total - omitted - head;
    assert!(head + tail <= cap, "more kept than the cap");
    assert_eq!(&kept[..head], &printed[..head], "the start is kept");
    assert_eq!(&kept[head..head + marker.len()], marker.as_bytes());
    assert_eq!(
        &kept[head + marker.len()..],
        &printed[total - tail..],
        "the end is kept"
    );
});
