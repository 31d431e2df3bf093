//! Whether two members can reach each other directly, from their NAT types. The table is
//! the one measured in our lab (design.md §6: real nftables NATs in network namespaces):
//! simultaneous UDP punching works for every pair except port-restricted cone with
//! symmetric, and symmetric with symmetric. `tests` in `crate::sim` check the NAT models
//! against it.

use serde::{Deserialize, Serialize};

use super::NatType;

/// What to do for a pair of members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// Punching gets through: go direct.
    Direct,
    /// Punching cannot get through: use a relay.
    Relay,
    /// One side's NAT is unknown: start on a relay and try punching meanwhile.
    TryRelayFirst,
}

/// The prediction for members behind `a` and `b` (symmetric in its arguments).
pub fn direct_possible(a: NatType, b: NatType) -> Prediction {
    use NatType::{PortRestrictedCone, Symmetric, Unknown};
    match (a, b) {
        (Unknown, _) | (_, Unknown) => Prediction::TryRelayFirst,
        (Symmetric, Symmetric)
        | (PortRestrictedCone, Symmetric)
        | (Symmetric, PortRestrictedCone) => Prediction::Relay,
        _ => Prediction::Direct,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_matches_the_lab_matrix() {
        use Prediction::{Direct as D, Relay as R, TryRelayFirst as T};
        // Rows and columns in NatType::ALL order: open, full cone, restricted cone,
        // port-restricted cone, symmetric, unknown.
        let matrix = [
            [D, D, D, D, D, T],
            [D, D, D, D, D, T],
            [D, D, D, D, D, T],
            [D, D, D, D, R, T],
            [D, D, D, R, R, T],
            [T, T, T, T, T, T],
        ];
        for (i, a) in NatType::ALL.into_iter().enumerate() {
            for (j, b) in NatType::ALL.into_iter().enumerate() {
                assert_eq!(direct_possible(a, b), matrix[i][j], "{a:?} with {b:?}");
            }
        }
    }

    #[test]
    fn predictions_serialize_in_snake_case() {
        assert_eq!(
            serde_json::to_string(&Prediction::TryRelayFirst).unwrap(),
            "\"try_relay_first\""
        );
    }
}
