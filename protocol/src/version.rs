//! Protocol version numbers and the handshake that picks one version per fleet link.
//!
//! The side that opens a link sends a [`VersionOffer`] in its first frame; the other side calls
//! [`negotiate`] and both then encode every frame with the chosen version. A release speaks a
//! contiguous range of versions ([`SUPPORTED`]) so that, during a rolling upgrade, an upgraded
//! coordinator and a not-yet-upgraded rack agent still find a version in common.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;

/// A fleet protocol version. Versions only grow; each one names a complete wire format.
pub type ProtocolVersion = u16;

/// The newest version this build speaks; it is what we pick when the peer speaks it too.
pub const CURRENT: ProtocolVersion = 1;

/// The oldest version this build still speaks. Raise it only once no supported release
/// speaks anything older, otherwise a rolling upgrade strands the old agents.
pub const MIN_SUPPORTED: ProtocolVersion = 1;

/// Every version this build can encode and decode.
pub const SUPPORTED: RangeInclusive<ProtocolVersion> = MIN_SUPPORTED..=CURRENT;

/// The versions the connecting side speaks, sent in the first frame of every link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionOffer {
    /// Oldest version the sender can speak.
    pub min: ProtocolVersion,
    /// Newest version the sender can speak; must be `>= min`.
    pub max: ProtocolVersion,
    /// The sender's software name and release (e.g. `rack-agent 0.3.1`), for log lines and
    /// error messages only; never used to make a decision.
    pub software: String,
}

impl VersionOffer {
    /// The offer this build makes: [`MIN_SUPPORTED`]`..=`[`CURRENT`], tagged with `software`.
    pub fn ours(software: &str) -> Self {
        Self {
            min: MIN_SUPPORTED,
            max: CURRENT,
            software: software.to_owned(),
        }
    }

    /// The offered versions as a range (empty when the offer is invalid, `min > max`).
    pub fn range(&self) -> RangeInclusive<ProtocolVersion> {
        self.min..=self.max
    }
}

/// The two sides of a link share no protocol version, or the peer's offer is invalid.
///
/// The message names both ranges and which side to upgrade, so an operator reading the log
/// of either end knows what to do without looking up release notes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct VersionMismatch {
    /// Oldest version we speak.
    pub ours_min: ProtocolVersion,
    /// Newest version we speak.
    pub ours_max: ProtocolVersion,
    /// Oldest version the peer offered.
    pub theirs_min: ProtocolVersion,
    /// Newest version the peer offered.
    pub theirs_max: ProtocolVersion,
}

impl VersionMismatch {
    /// True when the failure is a malformed offer (`min > max` on either side) rather than two
    /// well-formed ranges that do not overlap.
    pub fn is_invalid_offer(&self) -> bool {
        self.theirs_min > self.theirs_max || self.ours_min > self.ours_max
    }

    /// The stable error code to report: [`ErrorCode::BadRequest`] for a malformed offer,
    /// [`ErrorCode::UnsupportedVersion`] otherwise.
    pub fn code(&self) -> ErrorCode {
        if self.is_invalid_offer() {
            ErrorCode::BadRequest
        } else {
            ErrorCode::UnsupportedVersion
        }
    }

    fn describe(&self) -> String {
        let ours = format!("{}..={}", self.ours_min, self.ours_max);
        let theirs = format!("{}..={}", self.theirs_min, self.theirs_max);
        if self.theirs_min > self.theirs_max {
            format!(
                "peer offered an invalid protocol version range {theirs} (min > max), \
                 we speak {ours}: the peer's software is faulty"
            )
        } else if self.ours_min > self.ours_max {
            format!(
                "our own protocol version range {ours} is empty (min > max), \
                 peer speaks {theirs}: this build is faulty"
            )
        } else if self.theirs_max < self.ours_min {
            format!(
                "peer speaks protocol {theirs}, we speak {ours}: upgrade the older side (the peer)"
            )
        } else {
            format!(
                "peer speaks protocol {theirs}, we speak {ours}: upgrade the older side (this one)"
            )
        }
    }
}

/// Picks the highest version both `ours` and the peer's offer contain.
///
/// Fails when the ranges do not overlap, or when either range is empty (`min > max`), which a
/// correct peer never sends.
pub fn negotiate(
    ours: RangeInclusive<ProtocolVersion>,
    theirs: &VersionOffer,
) -> Result<ProtocolVersion, VersionMismatch> {
    let (ours_min, ours_max) = ours.into_inner();
    let mismatch = VersionMismatch {
        ours_min,
        ours_max,
        theirs_min: theirs.min,
        theirs_max: theirs.max,
    };
    if mismatch.is_invalid_offer() {
        return Err(mismatch);
    }
    let low = ours_min.max(theirs.min);
    let high = ours_max.min(theirs.max);
    if low <= high {
        Ok(high)
    } else {
        Err(mismatch)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn offer(min: u16, max: u16) -> VersionOffer {
        VersionOffer {
            min,
            max,
            software: "test-peer 0.0.0".to_owned(),
        }
    }

    #[test]
    fn our_offer_covers_supported() {
        let o = VersionOffer::ours("metalfleet-test 1.0");
        assert_eq!(o.range(), SUPPORTED);
        assert_eq!(o.software, "metalfleet-test 1.0");
        assert_eq!(negotiate(SUPPORTED, &o).unwrap(), CURRENT);
    }

    #[test]
    fn overlap_picks_highest_common() {
        assert_eq!(negotiate(1..=3, &offer(2, 5)).unwrap(), 3);
        assert_eq!(negotiate(2..=5, &offer(1, 3)).unwrap(), 3);
        assert_eq!(negotiate(1..=5, &offer(2, 3)).unwrap(), 3);
        assert_eq!(negotiate(2..=3, &offer(1, 5)).unwrap(), 3);
        assert_eq!(negotiate(1..=1, &offer(1, 1)).unwrap(), 1);
        // Touching at a single version.
        assert_eq!(negotiate(1..=2, &offer(2, 4)).unwrap(), 2);
    }

    #[test]
    fn disjoint_peer_newer() {
        let err = negotiate(1..=2, &offer(3, 4)).unwrap_err();
        assert_eq!(
            err,
            VersionMismatch {
                ours_min: 1,
                ours_max: 2,
                theirs_min: 3,
                theirs_max: 4
            }
        );
        assert!(!err.is_invalid_offer());
        assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
        let msg = err.to_string();
        assert!(msg.contains("peer speaks protocol 3..=4"), "{msg}");
        assert!(msg.contains("we speak 1..=2"), "{msg}");
        assert!(msg.contains("upgrade the older side (this one)"), "{msg}");
    }

    #[test]
    fn disjoint_peer_older() {
        let err = negotiate(3..=4, &offer(1, 2)).unwrap_err();
        assert!(!err.is_invalid_offer());
        let msg = err.to_string();
        assert!(msg.contains("peer speaks protocol 1..=2"), "{msg}");
        assert!(msg.contains("we speak 3..=4"), "{msg}");
        assert!(msg.contains("upgrade the older side (the peer)"), "{msg}");
    }

    #[test]
    fn inverted_offer_is_invalid() {
        // 2..=1 would "overlap" 1..=3 if only the bounds were compared.
        let err = negotiate(1..=3, &offer(2, 1)).unwrap_err();
        assert!(err.is_invalid_offer());
        assert_eq!(err.code(), ErrorCode::BadRequest);
        assert!(err.to_string().contains("invalid"), "{err}");
    }

    #[test]
    fn inverted_own_range_is_refused() {
        #[allow(clippy::reversed_empty_ranges)]
        let err = negotiate(3..=1, &offer(1, 3)).unwrap_err();
        assert!(err.is_invalid_offer());
    }

    #[test]
    fn offer_round_trips_through_postcard_and_json() {
        let o = VersionOffer::ours("rack-agent 0.1.0");
        let bytes = postcard::to_stdvec(&o).unwrap();
        assert_eq!(postcard::from_bytes::<VersionOffer>(&bytes).unwrap(), o);
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(serde_json::from_str::<VersionOffer>(&json).unwrap(), o);
    }
}
