//! The flaky-detection benchmark: tests with known failure probabilities, run many times with one
//! retry, through the real history writer into a real sled store; the `flaky` query is asked after
//! 10, 50 and 100 runs. The expected detection share is computed beside the measured one.

use std::sync::Arc;

use testfleet_coordinator::SledStore;
use testfleet_coordinator::history::{query, spawn_writer};

use crate::simhistory::{Attempt, send_run};

#[derive(clap::Args)]
pub struct Args {
    /// Tests per failure probability (and stable tests).
    #[arg(long, default_value_t = 200)]
    pub tests_per_class: usize,
    /// Runs to simulate.
    #[arg(long, default_value_t = 100)]
    pub runs: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

const PROBABILITIES: [f64; 4] = [0.005, 0.01, 0.05, 0.20];
const CHECKPOINTS: [u64; 3] = [10, 50, 100];

pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SledStore::open(dir.path())?);
    let mut rng = fastrand::Rng::with_seed(args.seed);
    // Class 0 is stable; classes 1.. fail with PROBABILITIES[class - 1].
    let classes = PROBABILITIES.len() + 1;
    let names: Vec<(usize, String)> = (0..classes)
        .flat_map(|c| (0..args.tests_per_class).map(move |i| (c, format!("class{c}::t{i:04}"))))
        .collect();
    println!(
        "detection: {} tests per class, one retry per failure, a new revision every run (seed {})",
        args.tests_per_class, args.seed
    );
    println!(
        "{:>6} {:>10} {:>10} {:>10} {:>10}   false positives (of {} stable)",
        "runs", "p=0.5%", "p=1%", "p=5%", "p=20%", args.tests_per_class
    );
    for run in 1..=args.runs {
        let (tx, writer) = spawn_writer(store.clone(), None);
        let tests: Vec<(String, Vec<Attempt>)> = names
            .iter()
            .map(|(class, name)| {
                let p = if *class == 0 {
                    0.0
                } else {
                    PROBABILITIES[class - 1]
                };
                let first = Attempt {
                    failed: rng.f64() < p,
                    ms: 10,
                };
                let mut attempts = vec![first];
                if first.failed {
                    attempts.push(Attempt {
                        failed: rng.f64() < p,
                        ms: 10,
                    });
                }
                (name.clone(), attempts)
            })
            .collect();
        send_run(&tx, run, "sim", &tests, 1)?;
        drop(tx);
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("the history writer panicked"))?;
        if CHECKPOINTS.contains(&run) || run == args.runs {
            let flaky = query::flaky(store.as_ref(), Some("sim"))?;
            let mut found = vec![0usize; classes];
            for f in &flaky {
                let class: usize = f.test.name[5..6].parse()?;
                found[class] += 1;
            }
            let share = |c: usize| 100.0 * found[c] as f64 / args.tests_per_class as f64;
            // A test is detected once some run failed it and then passed it on retry:
            // P = 1 − (1 − p(1−p))^runs.
            let expected = |p: f64| 100.0 * (1.0 - (1.0 - p * (1.0 - p)).powf(run as f64));
            println!(
                "{run:>6} {:>10} {:>10} {:>10} {:>10}   {}",
                format!("{:.1}%", share(1)),
                format!("{:.1}%", share(2)),
                format!("{:.1}%", share(3)),
                format!("{:.1}%", share(4)),
                found[0]
            );
            println!(
                "{:>6} {:>10} {:>10} {:>10} {:>10}",
                "expect",
                format!("{:.1}%", expected(PROBABILITIES[0])),
                format!("{:.1}%", expected(PROBABILITIES[1])),
                format!("{:.1}%", expected(PROBABILITIES[2])),
                format!("{:.1}%", expected(PROBABILITIES[3]))
            );
        }
    }
    Ok(())
}
