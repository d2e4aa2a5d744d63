//! Contenders timed in turns: one warm-up each, then rounds in which every contender runs once,
//! each round starting one place further on, so that no contender always runs first (cold page
//! cache) or last (a busy neighbour); each contender's median wall is what counts.

/// The median wall of each contender, in the order given; `time(i)` runs contender `i` once and
/// returns its wall in seconds.
pub fn median_walls(
    contenders: usize,
    rounds: usize,
    mut time: impl FnMut(usize) -> anyhow::Result<f64>,
) -> anyhow::Result<Vec<f64>> {
    // One warm-up of each (page cache, bytecode, history's first run), not counted.
    for i in 0..contenders {
        time(i)?;
    }
    let mut walls: Vec<Vec<f64>> = vec![vec![]; contenders];
    for round in 0..rounds.max(1) {
        for k in 0..contenders {
            let i = (k + round) % contenders;
            walls[i].push(time(i)?);
        }
    }
    Ok(walls.into_iter().map(median).collect())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contender_takes_turns_and_its_median_counts() {
        let mut order = vec![];
        let walls = median_walls(3, 3, |i| {
            order.push(i);
            // Contender i's k-th run takes i + k seconds: its median is i + 2 (warm-up is 0).
            Ok((i + order.iter().filter(|&&j| j == i).count() - 1) as f64)
        })
        .unwrap();
        assert_eq!(order, [0, 1, 2, 0, 1, 2, 1, 2, 0, 2, 0, 1]);
        assert_eq!(walls, [2.0, 3.0, 4.0]);
    }
}
