//! Capped output capture: keeps the first and the last part of a test's output and counts what was
//! dropped in between, so a test that prints gigabytes costs a bounded amount of memory.

use std::collections::VecDeque;

pub struct Capture {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    head_cap: usize,
    tail_cap: usize,
    omitted: u64,
}

impl Capture {
    /// Keeps at most `cap` bytes: half from the start, half from the end.
    pub fn new(cap: usize) -> Self {
        let head_cap = cap / 2;
        Capture {
            head: Vec::new(),
            tail: VecDeque::new(),
            head_cap,
            tail_cap: cap - head_cap,
            omitted: 0,
        }
    }

    pub fn push(&mut self, mut data: &[u8]) {
        if self.head.len() < self.head_cap {
            let n = (self.head_cap - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.len() >= self.tail_cap {
            self.omitted += self.tail.len() as u64 + (data.len() - self.tail_cap) as u64;
            self.tail.clear();
            self.tail.extend(&data[data.len() - self.tail_cap..]);
            return;
        }
        let overflow = (self.tail.len() + data.len()).saturating_sub(self.tail_cap);
        self.tail.drain(..overflow);
        self.omitted += overflow as u64;
        self.tail.extend(data);
    }

    /// `bytes` capped as a test's output is: what [`Capture::finish`] gives after one push.
    pub fn capped(bytes: &[u8], cap: usize) -> (Vec<u8>, u64) {
        let mut c = Capture::new(cap);
        c.push(bytes);
        c.finish()
    }

    /// The kept bytes, with a marker where output was dropped, and the number of bytes dropped.
    pub fn finish(self) -> (Vec<u8>, u64) {
        let mut out = self.head;
        if self.omitted > 0 {
            out.extend_from_slice(
                format!("\n[testfleet: {} bytes of output omitted]\n", self.omitted).as_bytes(),
            );
        }
        out.extend(self.tail);
        (out, self.omitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_output_is_kept_whole() {
        let mut c = Capture::new(100);
        c.push(b"hello ");
        c.push(b"world");
        assert_eq!(c.finish(), (b"hello world".to_vec(), 0));
    }

    #[test]
    fn large_output_keeps_head_and_tail_and_counts_the_rest() {
        let mut c = Capture::new(10);
        let data: Vec<u8> = (0..100u8).collect();
        for chunk in data.chunks(7) {
            c.push(chunk);
        }
        let (out, omitted) = c.finish();
        assert_eq!(omitted, 90);
        assert_eq!(&out[..5], &[0, 1, 2, 3, 4]);
        assert_eq!(&out[out.len() - 5..], &[95, 96, 97, 98, 99]);
        assert!(String::from_utf8_lossy(&out).contains("90 bytes of output omitted"));
    }

    #[test]
    fn one_huge_push_is_handled_like_many_small_ones() {
        let data: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let mut one = Capture::new(64);
        one.push(&data);
        let mut many = Capture::new(64);
        for b in &data {
            many.push(std::slice::from_ref(b));
        }
        assert_eq!(one.finish(), many.finish());
    }
}
