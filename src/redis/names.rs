//! Redis key names for shared limits.
//!
//! # Scheme
//!
//! ```text
//! encode_key(prefix, name, None)      = "{prefix}:{N}:{name}:-"
//! encode_key(prefix, name, Some(key)) = "{prefix}:{N}:{name}:{K}:{hex(key)}"
//! ```
//!
//! `N` is the byte length of `name` and `K` the byte length of `key`, both in
//! decimal; `hex` is lowercase, two digits a byte. Under one prefix the map from
//! `(name, key)` to the string is injective: reading left to right after the
//! prefix, `N` ends at the first `:`, which fixes where `name` ends whatever
//! bytes it holds (`:` and digits included); the next byte is `-` (no key) or a
//! digit (a key, possibly empty), and the hex part has no `:`. [`decode_key`]
//! inverts it, which is what the tests check.
//!
//! The prefix is not length-prefixed: it is the deployment's namespace, the
//! same for every process that shares a limit, and is expected to contain no
//! user input. Two different prefixes where one is a prefix of the other *can*
//! produce the same string; keep prefixes fixed. [`encode_typed_key`] adds a
//! one-letter kind after the prefix so a rate and a concurrency limit with the
//! same name never share a key (their values have different Redis types).
//!
//! Names are kept readable (`redis-cli --scan` shows them); keys are hex
//! because they are arbitrary bytes. A name containing `{...}` would act as a
//! Redis Cluster hash tag; every script touches one key, so that only moves the
//! key to another slot and never breaks a script.

use std::fmt::Write as _;

/// Which kind of state a key holds; a different kind never shares a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum KeyKind {
    /// A GCRA TAT (a Redis string), see the rate script (`lua/gcra.lua`).
    Rate,
    /// A sorted set of slot holders, see the slot scripts (`lua/acquire.lua`).
    Concurrency,
}

impl KeyKind {
    fn tag(self) -> &'static str {
        match self {
            KeyKind::Rate => "r",
            KeyKind::Concurrency => "c",
        }
    }
}

/// The Redis key for the limit `name`, optionally split per `key`. See the
/// module docs for the scheme.
///
/// ```text
/// assert_eq!(encode_key("tg", "api", None), "tg:3:api:-");
/// assert_eq!(encode_key("tg", "api", Some(b"u1")), "tg:3:api:2:7531");
/// assert_eq!(encode_key("tg", "a:1", Some(b"")), "tg:3:a:1:0:");
/// ```
pub(crate) fn encode_key(prefix: &str, name: &str, key: Option<&[u8]>) -> String {
    let mut out =
        String::with_capacity(prefix.len() + name.len() + key.map_or(0, |k| 2 * k.len()) + 16);
    out.push_str(prefix);
    // Writing to a String cannot fail.
    let _ = write!(out, ":{}:{}:", name.len(), name);
    match key {
        None => out.push('-'),
        Some(key) => {
            let _ = write!(out, "{}:", key.len());
            for b in key {
                let _ = write!(out, "{b:02x}");
            }
        }
    }
    out
}

/// [`encode_key`] under `{prefix}:{r|c}`, so each kind has its own keys.
pub(crate) fn encode_typed_key(
    prefix: &str,
    kind: KeyKind,
    name: &str,
    key: Option<&[u8]>,
) -> String {
    encode_key(&format!("{prefix}:{}", kind.tag()), name, key)
}

/// Inverse of [`encode_key`] for a known prefix: `None` if `encoded` is not
/// something `encode_key(prefix, ..)` produces. Used by tests to prove the
/// encoding injective, and handy for tooling that lists keys.
#[cfg(test)]
pub(crate) fn decode_key(prefix: &str, encoded: &str) -> Option<(String, Option<Vec<u8>>)> {
    let rest = encoded.strip_prefix(prefix)?.strip_prefix(':')?;
    let (len, rest) = rest.split_once(':')?;
    let name_len = parse_len(len)?;
    let name = rest.get(..name_len)?;
    let rest = rest.get(name_len..)?.strip_prefix(':')?;
    if rest == "-" {
        return Some((name.to_owned(), None));
    }
    let (len, hex) = rest.split_once(':')?;
    let key_len = parse_len(len)?;
    if hex.len() != 2 * key_len {
        return None;
    }
    let mut key = Vec::with_capacity(key_len);
    for i in 0..key_len {
        let pair = hex.get(2 * i..2 * i + 2)?;
        if pair
            .bytes()
            .any(|b| !matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        key.push(u8::from_str_radix(pair, 16).ok()?);
    }
    Some((name.to_owned(), Some(key)))
}

#[cfg(test)]
/// A canonical decimal length: digits only, no leading zero (except "0").
fn parse_len(s: &str) -> Option<usize> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn tricky_names() -> Vec<String> {
        let mut v: Vec<String> = [
            "", ":", "::", "0", "1", "10", "1:", ":1", "1:a", "a:1", "a", "a:", "a:1:", "a:-", "-",
            "a:1:-", "3:abc", "2:ab:-", "0:", "0:-", "1:a:1:61", "é", "é:1", "{tag}", " ", "\n",
            "a:1:a", "12:a:1", "a\u{0}b",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Names that look like whole encoded keys.
        v.push(encode_key("", "a", Some(b"b")));
        v.push(encode_key("", "a", None));
        v.push(encode_key("p", "1:a", Some(b":")));
        v
    }

    fn tricky_keys() -> Vec<Option<Vec<u8>>> {
        let mut v: Vec<Option<Vec<u8>>> = vec![None];
        for k in [
            &b""[..],
            b":",
            b"-",
            b"0",
            b"1",
            b"1:",
            b":1",
            b"a",
            b"a:1",
            b"\x00",
            b"\x00\x00",
            b"\xff",
            b"61",
            b"1:61",
            b"0:",
        ] {
            v.push(Some(k.to_vec()));
        }
        v
    }

    #[test]
    fn documented_examples() {
        assert_eq!(encode_key("tg", "api", None), "tg:3:api:-");
        assert_eq!(encode_key("tg", "api", Some(b"u1")), "tg:3:api:2:7531");
        assert_eq!(encode_key("tg", "", Some(b"")), "tg:0::0:");
        assert_eq!(
            encode_typed_key("tg", KeyKind::Rate, "api", None),
            "tg:r:3:api:-"
        );
    }

    #[test]
    fn no_collisions_and_round_trip_on_tricky_inputs() {
        for prefix in ["", "tg", "tg:1", "taskgate:v1"] {
            let mut seen: HashMap<String, (String, Option<Vec<u8>>)> = HashMap::new();
            for name in tricky_names() {
                for key in tricky_keys() {
                    let enc = encode_key(prefix, &name, key.as_deref());
                    assert_eq!(
                        decode_key(prefix, &enc),
                        Some((name.clone(), key.clone())),
                        "round trip of {enc:?}"
                    );
                    if let Some(prev) = seen.insert(enc.clone(), (name.clone(), key.clone())) {
                        panic!("{enc:?} from both {prev:?} and {:?}", (name, key));
                    }
                }
            }
            assert_eq!(seen.len(), tricky_names().len() * tricky_keys().len());
        }
    }

    #[test]
    fn kinds_never_share_a_key() {
        for name in tricky_names() {
            for key in tricky_keys() {
                let r = encode_typed_key("tg", KeyKind::Rate, &name, key.as_deref());
                let c = encode_typed_key("tg", KeyKind::Concurrency, &name, key.as_deref());
                assert_ne!(r, c);
            }
        }
    }

    #[test]
    fn exhaustive_small_alphabet() {
        // Every name over {':', '1', 'a'} up to length 4 and key over {':', '1'}
        // up to length 2: all encodings distinct.
        fn words(alpha: &[u8], max: usize) -> Vec<Vec<u8>> {
            let mut out = vec![vec![]];
            let mut layer = vec![vec![]];
            for _ in 0..max {
                let mut next = vec![];
                for w in &layer {
                    for &c in alpha {
                        let mut w2 = w.clone();
                        w2.push(c);
                        next.push(w2);
                    }
                }
                out.extend(next.iter().cloned());
                layer = next;
            }
            out
        }
        let names = words(b":1a", 4);
        let keys = words(b":1", 2);
        let mut seen = std::collections::HashSet::new();
        for n in &names {
            let n = std::str::from_utf8(n).unwrap();
            assert!(seen.insert(encode_key("p", n, None)));
            for k in &keys {
                assert!(seen.insert(encode_key("p", n, Some(k))));
            }
        }
    }

    #[test]
    fn decode_rejects_non_canonical() {
        assert_eq!(decode_key("tg", "tg:03:api:-"), None);
        assert_eq!(decode_key("tg", "tg:3:api:1:6"), None);
        assert_eq!(decode_key("tg", "tg:3:api:1:6A"), None);
        assert_eq!(decode_key("tg", "tg:4:api:-"), None);
        assert_eq!(decode_key("tg", "xx:3:api:-"), None);
    }
}
