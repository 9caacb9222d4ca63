//! Deserializers that take values the way people write them in TOML and in environment variables:
//! durations as `90s`/`2m`/`1h` (or a number of seconds), sizes as `256KiB`, lists as arrays or
//! comma-separated strings, secrets as strings even when they look like numbers. Secrets serialize
//! as a marker so that printing the configuration can never leak them.

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use std::fmt;

pub const REDACTED: &str = "[redacted]";

/// A scalar or a list of scalars, every item as text.
fn texts<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct Texts;
    impl<'de> Visitor<'de> for Texts {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list or a comma-separated string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element::<Text>()? {
                out.push(item.0);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_any(Texts)
}

/// One scalar as text (a number or a boolean read from the environment stays what was typed).
struct Text(String);

impl<'de> serde::Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(TextVisitor)
    }
}

/// A bare number of seconds, or a humantime duration like `90s`, `2m` or `1h`.
pub(crate) fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like 90s, 2m or 1h ({e})"))
}

pub mod duration {
    use super::*;
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let Text(text) = serde::Deserialize::deserialize(d)?;
        parse_duration(&text).map_err(de::Error::custom)
    }

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*value).to_string())
    }
}

pub mod duration_list {
    use super::*;
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        texts(d)?
            .iter()
            .map(|t| parse_duration(t).map_err(de::Error::custom))
            .collect()
    }

    pub fn serialize<S: Serializer>(value: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let joined: Vec<String> = value
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect();
        s.collect_seq(joined)
    }
}

pub mod size {
    use super::*;
    use bytesize::ByteSize;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        let Text(text) = serde::Deserialize::deserialize(d)?;
        if let Ok(bytes) = text.trim().parse::<u64>() {
            return Ok(ByteSize::b(bytes));
        }
        text.trim()
            .parse::<ByteSize>()
            .map_err(|e| de::Error::custom(format!("`{text}` is not a size like 256KiB ({e})")))
    }

    pub fn serialize<S: Serializer>(value: &ByteSize, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&value.display().iec().to_string())
    }
}

pub mod secret {
    use super::*;
    use secrecy::SecretString;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
        let Text(text) = serde::Deserialize::deserialize(d)?;
        Ok(SecretString::from(text))
    }

    pub fn serialize<S: Serializer>(_: &SecretString, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

pub mod secret_opt {
    use super::*;
    use secrecy::SecretString;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
        let Text(text) = serde::Deserialize::deserialize(d)?;
        Ok(Some(SecretString::from(text)))
    }

    pub fn serialize<S: Serializer>(value: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(_) => s.serialize_str(REDACTED),
            None => s.serialize_str("(not set)"),
        }
    }
}

pub mod secret_list {
    use super::*;
    use secrecy::SecretString;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SecretString>, D::Error> {
        Ok(texts(d)?.into_iter().map(SecretString::from).collect())
    }

    pub fn serialize<S: Serializer>(value: &[SecretString], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(value.iter().map(|_| REDACTED))
    }
}

/// Plain strings, as an array or a comma-separated string (`video,thumbnail`).
pub mod list {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        texts(d)
    }

    pub fn serialize<S: Serializer>(value: &[String], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(value)
    }
}
