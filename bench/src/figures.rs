//! What a benchmark reports: figures with their target, printed the same way by every benchmark and
//! gathered into one table by `all`, where a missed target is marked plainly.

use std::fmt;

/// Which side of the target a figure must be on.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    AtMost(f64),
    Below(f64),
    AtLeast(f64),
    /// Reported for context, no target.
    None,
}

impl Target {
    pub fn met(self, value: f64) -> Option<bool> {
        match self {
            Target::AtMost(t) => Some(value <= t),
            Target::Below(t) => Some(value < t),
            Target::AtLeast(t) => Some(value >= t),
            Target::None => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Figure {
    pub bench: &'static str,
    pub name: String,
    pub value: f64,
    /// `×` for ratios, else a unit such as `ms`, `MiB`, `results/s`.
    pub unit: &'static str,
    pub target: Target,
}

impl Figure {
    pub fn new(
        bench: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        target: Target,
    ) -> Self {
        Figure {
            bench,
            name: name.into(),
            value,
            unit,
            target,
        }
    }

    pub fn missed(&self) -> bool {
        self.target.met(self.value) == Some(false)
    }
}

fn number(v: f64, unit: &str) -> String {
    match unit {
        "×" => format!("{v:.3}×"),
        _ if v >= 1000.0 => format!("{} {unit}", thousands(v.round() as u64)),
        _ if v >= 100.0 => format!("{v:.0} {unit}"),
        _ => format!("{v:.2} {unit}"),
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match self.target {
            Target::AtMost(t) => format!("target ≤ {}", number(t, self.unit)),
            Target::Below(t) => format!("target < {}", number(t, self.unit)),
            Target::AtLeast(t) => format!("target ≥ {}", number(t, self.unit)),
            Target::None => String::new(),
        };
        let mark = match self.target.met(self.value) {
            Some(true) => "ok",
            Some(false) => "MISSED",
            None => "",
        };
        write!(
            f,
            "{:<11} {:<52} {:>16}   {:<24} {}",
            self.bench,
            self.name,
            number(self.value, self.unit),
            target,
            mark
        )
    }
}

/// Prints figures as they come, one per line.
pub fn print(figures: &[Figure]) {
    for fig in figures {
        println!("{fig}");
    }
}

/// The closing table of `all`: every figure, then how many targets were missed.
pub fn print_table(figures: &[Figure]) {
    println!("\n== all figures ==");
    print(figures);
    let targets = figures
        .iter()
        .filter(|f| !matches!(f.target, Target::None))
        .count();
    let missed: Vec<&Figure> = figures.iter().filter(|f| f.missed()).collect();
    if missed.is_empty() {
        println!("\n{targets} targets, all met");
    } else {
        println!("\n{targets} targets, {} MISSED:", missed.len());
        for m in missed {
            println!("  MISSED: {} / {}", m.bench, m.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_judged_on_the_right_side() {
        assert_eq!(Target::AtMost(1.05).met(1.05), Some(true));
        assert_eq!(Target::AtMost(1.05).met(1.06), Some(false));
        assert_eq!(Target::Below(10.0).met(10.0), Some(false));
        assert_eq!(Target::AtLeast(50_000.0).met(49_999.0), Some(false));
        assert_eq!(Target::None.met(3.0), None);
    }

    #[test]
    fn large_numbers_get_separators() {
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(number(0.5, "×"), "0.500×");
    }
}
