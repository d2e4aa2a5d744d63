//! Reading many keys of one tree at once (a plan reads every test of a run): in key order, by
//! one scan over their range, instead of a lookup from the tree's root for each. A scan walks
//! every key in the range, the run's or not: where the run's keys are sparse among others, it
//! turns to lookups once it has stepped over more keys than it was asked for.

use super::super::HistoryError;

/// Below this many keys, lookups are as cheap as a scan.
const SCAN_MIN_KEYS: usize = 256;

/// The values of `keys` in `tree`, in the order of `keys` (which may repeat).
pub(super) fn get_many(
    tree: &sled::Tree,
    keys: &[Vec<u8>],
) -> Result<Vec<Option<sled::IVec>>, HistoryError> {
    if keys.len() < SCAN_MIN_KEYS {
        return keys
            .iter()
            .map(|k| Ok(tree.get(k)?))
            .collect::<Result<_, HistoryError>>();
    }
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_unstable_by(|a, b| keys[*a].cmp(&keys[*b]));
    let (first, last) = (&keys[order[0]], &keys[order[order.len() - 1]]);
    let mut scan = tree.range(first.as_slice()..=last.as_slice());
    let mut at = scan.next().transpose()?;
    // Keys stepped over that nobody asked for, before lookups take over.
    let mut strays = keys.len() * 2;
    let mut out: Vec<Option<sled::IVec>> = vec![None; keys.len()];
    for i in order {
        let key = keys[i].as_slice();
        if strays == 0 {
            out[i] = tree.get(key)?;
            continue;
        }
        while let Some((k, _)) = &at {
            if k.as_ref() >= key {
                break;
            }
            strays = strays.saturating_sub(1);
            at = scan.next().transpose()?;
        }
        match &at {
            Some((k, v)) if k.as_ref() == key => out[i] = Some(v.clone()),
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the keys (repeated, missing, dense or sparse among others), the values are those
    /// of lookups one by one.
    #[test]
    fn the_values_are_those_of_lookups() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("t").unwrap();
        for i in (0..20_000u32).step_by(3) {
            tree.insert(format!("k{i:06}"), &i.to_be_bytes()).unwrap();
        }
        let cases: Vec<Vec<Vec<u8>>> = vec![
            // Dense, in reverse, with repeats and misses.
            (0..3_000u32)
                .rev()
                .chain([9, 9, 30])
                .map(|i| format!("k{i:06}").into_bytes())
                .collect(),
            // Sparse among many others: the scan gives way to lookups.
            (0..400u32)
                .map(|i| format!("k{:06}", i * 48).into_bytes())
                .collect(),
            // Few.
            vec![b"k000003".to_vec(), b"nothing".to_vec()],
            // None stored in their range.
            (0..500u32).map(|i| format!("z{i}").into_bytes()).collect(),
        ];
        for keys in cases {
            let one_by_one: Vec<_> = keys.iter().map(|k| tree.get(k).unwrap()).collect();
            assert_eq!(get_many(&tree, &keys).unwrap(), one_by_one);
            assert!(one_by_one.iter().any(Option::is_some) || keys[0].starts_with(b"z"));
        }
    }
}
