//! Opaque pagination cursors.
//!
//! A job list cursor pins the newest history id at the first page (`snapshot`) and the position
//! reached (`position`); rows changed after the first page keep the place they had in the snapshot,
//! so a listing neither skips nor repeats a row while others write.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub snapshot: i64,
    pub position: i64,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}.{}", self.snapshot, self.position))
    }

    pub fn decode(text: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        let text = std::str::from_utf8(&bytes).ok()?;
        let (snapshot, position) = text.split_once('.')?;
        let cursor = Cursor {
            snapshot: snapshot.parse().ok()?,
            position: position.parse().ok()?,
        };
        (cursor.snapshot >= 0 && cursor.position >= 0).then_some(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = Cursor {
            snapshot: 99,
            position: 42,
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for bad in ["", "!!", "OTk", "LTEuMg", "YS5i"] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }
}
