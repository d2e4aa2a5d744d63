//! A run's entries as a group records them, encoded at once into the values they are stored in
//! (at most [`RUN_ENTRIES_PER_VALUE`] entries each): until the group commits it holds their bytes,
//! not owned copies of every test's names, message and output excerpt.

use super::super::records::{RunEntryRef, encode_encoded_slice};

/// A run's records are written in values of at most this many entries (a few kilobytes). sled
/// keeps small values inside its tree nodes, but a node with large ones is written to a file of
/// its own each time it is rewritten, and a leaf holds a dozen values or more: whole groups as one
/// value (up to 65,536 entries, megabytes) made every later insert into that leaf rewrite them.
pub(super) const RUN_ENTRIES_PER_VALUE: usize = 64;

/// One run's entries in a group: whole values, and the entries of the next one so far.
#[derive(Default)]
pub(super) struct RunChunks {
    full: Vec<Vec<u8>>,
    open: Vec<u8>,
    in_open: usize,
}

impl RunChunks {
    pub(super) fn push(&mut self, entry: &RunEntryRef<'_>) {
        self.open = postcard::to_extend(entry, std::mem::take(&mut self.open))
            .expect("history records always serialize");
        self.in_open += 1;
        if self.in_open == RUN_ENTRIES_PER_VALUE {
            self.close_open();
        }
    }

    /// The values to store, in the order their entries were recorded.
    pub(super) fn into_values(mut self) -> Vec<Vec<u8>> {
        self.close_open();
        self.full
    }

    fn close_open(&mut self) {
        if self.in_open > 0 {
            self.full
                .push(encode_encoded_slice(self.in_open, &self.open));
            self.open.clear();
            self.in_open = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::records::{AttemptRecord, AttemptRecordRef, RunEntry, encode};
    use super::*;
    use testfleet_model::{AttemptStatus, Outcome};

    /// Entry `i` both ways: owned, as stored before, and borrowed from the owned one's strings.
    fn both_ways(i: u32, push: &mut impl FnMut(&RunEntryRef<'_>)) -> RunEntry {
        let name = format!("module::test_{i}");
        let quarantined = i.is_multiple_of(5);
        if i % 7 == 3 {
            push(&RunEntryRef::Skipped {
                index: i,
                binary_id: "crate::bin",
                name: &name,
                quarantined,
            });
            return RunEntry::Skipped {
                index: i,
                binary_id: "crate::bin".into(),
                name,
                quarantined,
            };
        }
        let record = AttemptRecord {
            attempt: 1 + i % 3,
            agent_id: format!("agent-{}", i % 4),
            status: [AttemptStatus::Failed, AttemptStatus::Passed][(i % 2) as usize],
            duration_ms: u64::from(i) * 1_000_003,
            exit_code: i.is_multiple_of(2).then_some(i as i32 - 70),
            signal: i.is_multiple_of(11).then_some(9),
            message: "é".repeat(i as usize % 4),
            output_excerpt: "out\n".repeat(i as usize % 300),
        };
        let outcome = (i % 4 != 1).then_some(Outcome::Flaky);
        push(&RunEntryRef::Attempt {
            index: i,
            binary_id: "crate::bin",
            name: &name,
            quarantined,
            attempt: AttemptRecordRef {
                attempt: record.attempt,
                agent_id: &record.agent_id,
                status: record.status,
                duration_ms: record.duration_ms,
                exit_code: record.exit_code,
                signal: record.signal,
                message: &record.message,
                output_excerpt: &record.output_excerpt,
            },
            outcome,
        });
        RunEntry::Attempt {
            index: i,
            binary_id: "crate::bin".into(),
            name,
            quarantined,
            attempt: record,
            outcome,
        }
    }

    #[test]
    fn values_are_the_bytes_of_owned_entries_in_slices_of_the_same_size() {
        for n in [0, 1, 63, 64, 65, 200] {
            let mut chunks = RunChunks::default();
            let entries: Vec<RunEntry> = (0..n)
                .map(|i| both_ways(i, &mut |e| chunks.push(e)))
                .collect();
            let expected: Vec<Vec<u8>> = entries
                .chunks(RUN_ENTRIES_PER_VALUE)
                .map(|c| encode(&c))
                .collect();
            assert_eq!(chunks.into_values(), expected, "{n} entries");
        }
    }
}
