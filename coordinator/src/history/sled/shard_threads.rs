//! The threads that write a group's other shards of tests while the writer writes the first:
//! started once and kept for the store's life, not started for each group. Threads started per
//! group made each group's allocations those of a thread about to end; the allocator keeps an
//! ended thread's pages apart until another thread takes them over, and with a group every few
//! hundred milliseconds the ingest benchmark's coordinator held about a tenth more memory.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// Where jobs are sent, the end the threads share, and how many threads were started.
type Started = (Sender<Job>, Arc<Mutex<Receiver<Job>>>, usize);

#[derive(Default)]
pub(super) struct ShardThreads {
    /// Jobs go to whichever thread is free; none are started until the first job.
    jobs: Mutex<Option<Started>>,
}

impl ShardThreads {
    /// Runs `job` on one of at least `threads` threads, starting them if fewer run. They start
    /// with the priority of the thread that asks first (the history writer's). They end once the
    /// store is dropped.
    pub fn run(&self, threads: usize, job: Job) {
        let mut jobs = self.jobs.lock().expect("shard threads lock");
        let (tx, rx, started) = jobs.get_or_insert_with(|| {
            let (tx, rx) = channel::<Job>();
            (tx, Arc::new(Mutex::new(rx)), 0)
        });
        while *started < threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name("history-shard".into())
                .spawn(move || {
                    loop {
                        // The lock is held while waiting, not while working: the next job goes
                        // to a thread that is free.
                        let next = rx.lock().expect("shard jobs lock").recv();
                        match next {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })
                .expect("starting a history shard thread");
            *started += 1;
        }
        tx.send(job)
            .expect("shard threads run while the store does");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_the_same_threads_and_the_threads_end_with_it() {
        let threads = ShardThreads::default();
        let (done_tx, done) = channel();
        for i in 0..6 {
            let done_tx = done_tx.clone();
            threads.run(
                2,
                Box::new(move || {
                    done_tx
                        .send((i, std::thread::current().id()))
                        .expect("the test waits");
                }),
            );
        }
        let mut ran: Vec<_> = (0..6).map(|_| done.recv().unwrap()).collect();
        ran.sort_by_key(|(i, _)| *i);
        assert_eq!(
            ran.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5]
        );
        let ids: std::collections::HashSet<_> = ran.iter().map(|(_, id)| *id).collect();
        assert!(ids.len() <= 2, "six jobs on at most two threads: {ids:?}");
        assert_eq!(threads.jobs.lock().unwrap().as_ref().unwrap().2, 2);
        // With the store gone the threads end, each dropping its hold on the jobs' channel.
        let shared = Arc::downgrade(&threads.jobs.lock().unwrap().as_ref().unwrap().1);
        drop(threads);
        let guard = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while shared.strong_count() > 0 {
            assert!(
                std::time::Instant::now() < guard,
                "the shard threads did not end"
            );
            std::thread::yield_now();
        }
    }
}
