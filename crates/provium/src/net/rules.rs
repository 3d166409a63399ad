//! What the switch does to each directed pair of ports: the partitions and impairments
//! a test set, and the per-pair table the switch thread compiles from them.

use std::collections::{BTreeMap, BTreeSet};

use super::options::Impairment;

/// The rules as set through the [`Switch`](super::Switch) API; ports are indices.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Rules {
    /// Directed pairs (from, to) whose frames are dropped.
    pub(crate) partitions: BTreeSet<(usize, usize)>,
    /// Applies to every direction without its own entry in `directed`.
    pub(crate) segment: Impairment,
    pub(crate) directed: BTreeMap<(usize, usize), Impairment>,
}

/// The verdict material for one directed pair.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct PairRule {
    pub(crate) partitioned: bool,
    pub(crate) impairment: Impairment,
}

impl Rules {
    /// The rule for frames from port `from` to port `to`.
    pub(crate) fn pair(&self, from: usize, to: usize) -> PairRule {
        PairRule {
            partitioned: self.partitions.contains(&(from, to)),
            impairment: self
                .directed
                .get(&(from, to))
                .copied()
                .unwrap_or(self.segment),
        }
    }

    /// A dense `ports × ports` table, indexed `from * ports + to`.
    pub(crate) fn table(&self, ports: usize) -> Vec<PairRule> {
        (0..ports * ports)
            .map(|i| self.pair(i / ports, i % ports))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn direction_impairment_overrides_segment_and_partitions_are_directed() {
        let mut rules = Rules {
            segment: Impairment {
                latency: Duration::from_millis(50),
                ..Impairment::default()
            },
            ..Rules::default()
        };
        let slow = Impairment {
            latency: Duration::from_millis(200),
            ..Impairment::default()
        };
        rules.directed.insert((0, 1), slow);
        rules.partitions.insert((2, 0));
        let table = rules.table(3);
        assert_eq!(table[1].impairment, slow, "0 → 1 has its own");
        assert_eq!(
            table[3].impairment, rules.segment,
            "1 → 0 keeps the segment's"
        );
        assert!(table[2 * 3].partitioned, "2 → 0");
        assert!(!table[2].partitioned, "0 → 2 is open");
    }
}
