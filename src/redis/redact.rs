//! Keeping a Redis URL's password out of messages.
//!
//! [`redact`] rewrites a URL for display; [`Secrets`] remembers the password
//! (raw and percent-decoded) so any message that reaches a user (an error from
//! the redis crate, which never sees the redacted URL) can be scrubbed as well.

const MASK: &str = "***";

/// Query parameters that carry a password (`redis+unix:///p.sock?pass=...`).
fn is_secret_param(name: &str) -> bool {
    ["pass", "password", "passwd"]
        .iter()
        .any(|p| name.eq_ignore_ascii_case(p))
}

/// `url` with its password (userinfo `user:PASSWORD@` and `pass=`/`password=`
/// query parameters) replaced by `***`. Everything else is kept, the username
/// included. Works on strings that are not valid URLs too (best effort: the
/// text between the first `:` of the userinfo and the last `@` of the
/// authority is masked).
///
/// ```text
/// assert_eq!(redact("redis://:hunter2@db:6379/0"), "redis://:***@db:6379/0");
/// assert_eq!(redact("rediss://app:p%40ss@db/"), "rediss://app:***@db/");
/// assert_eq!(redact("redis+unix:///run/r.sock?db=1&pass=x"), "redis+unix:///run/r.sock?db=1&pass=***");
/// assert_eq!(redact("redis://db:6379"), "redis://db:6379");
/// ```
pub(crate) fn redact(url: &str) -> String {
    let parts = Parts::split(url);
    let mut out = String::with_capacity(url.len());
    out.push_str(parts.scheme);
    if let Some(userinfo) = parts.userinfo {
        match userinfo.split_once(':') {
            Some((user, _password)) => {
                out.push_str(user);
                out.push(':');
                out.push_str(MASK);
            }
            None => out.push_str(userinfo),
        }
        out.push('@');
    }
    out.push_str(parts.host);
    out.push_str(parts.path);
    if let Some(query) = parts.query {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((k, _)) if is_secret_param(k) => {
                    out.push_str(k);
                    out.push('=');
                    out.push_str(MASK);
                }
                _ => out.push_str(pair),
            }
        }
    }
    if let Some(fragment) = parts.fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// The passwords found in a URL, to scrub from any text shown to a user.
#[derive(Clone, Default)]
pub(crate) struct Secrets(Vec<String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} redacted)", self.0.len())
    }
}

impl Secrets {
    /// The password(s) in `url`, as written and percent-decoded.
    pub(crate) fn from_url(url: &str) -> Self {
        let parts = Parts::split(url);
        let mut raw = Vec::new();
        if let Some((_, password)) = parts.userinfo.and_then(|u| u.split_once(':')) {
            raw.push(password);
        }
        if let Some(query) = parts.query {
            for pair in query.split('&') {
                if let Some((k, v)) = pair.split_once('=')
                    && is_secret_param(k)
                {
                    raw.push(v);
                }
            }
        }
        let mut out = Vec::new();
        for s in raw {
            if s.is_empty() {
                continue;
            }
            out.push(s.to_owned());
            let decoded = percent_decode(s);
            if decoded != s && !decoded.is_empty() {
                out.push(decoded);
            }
        }
        // Longest first, so a secret that contains another is masked whole.
        out.sort_by_key(|s| std::cmp::Reverse(s.len()));
        out.dedup();
        Secrets(out)
    }

    /// `text` with every occurrence of a secret replaced by `***`.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.0 {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), MASK);
            }
        }
        out
    }
}

struct Parts<'a> {
    /// Up to and including `://` (empty if none).
    scheme: &'a str,
    userinfo: Option<&'a str>,
    host: &'a str,
    /// From the first `/` after the authority up to `?`/`#` (may be empty).
    path: &'a str,
    query: Option<&'a str>,
    fragment: Option<&'a str>,
}

impl<'a> Parts<'a> {
    fn split(url: &'a str) -> Self {
        let (scheme, rest) = match url.find("://") {
            Some(i) => url.split_at(i + 3),
            None => ("", url),
        };
        let (rest, fragment) = match rest.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (rest, None),
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (userinfo, host) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        Parts {
            scheme,
            userinfo,
            host,
            path,
            query,
            fragment,
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_userinfo_password() {
        assert_eq!(redact("redis://:pw@h:1/"), "redis://:***@h:1/");
        assert_eq!(redact("redis://u:pw@h"), "redis://u:***@h");
        assert_eq!(redact("redis://u@h"), "redis://u@h");
        assert_eq!(redact("redis://u:p@ss:w@h/2"), "redis://u:***@h/2");
        assert_eq!(redact("redis://h/0#insecure"), "redis://h/0#insecure");
        assert_eq!(redact(":pw@h:6379"), ":***@h:6379");
        assert_eq!(redact(""), "");
    }

    #[test]
    fn masks_query_password() {
        assert_eq!(
            redact("redis+unix:///tmp/r.sock?pass=pw&db=2"),
            "redis+unix:///tmp/r.sock?pass=***&db=2"
        );
        assert_eq!(redact("unix:///s?PASSWORD=pw"), "unix:///s?PASSWORD=***");
    }

    #[test]
    fn secrets_scrub_raw_and_decoded() {
        let s = Secrets::from_url("redis://app:p%40ss%2Fw0rd@h/");
        assert_eq!(s.scrub("x p%40ss%2Fw0rd y p@ss/w0rd z"), "x *** y *** z");
        assert!(!format!("{s:?}").contains("w0rd"));
        let none = Secrets::from_url("redis://h/");
        assert_eq!(none.scrub("p@ss"), "p@ss");
    }

    #[test]
    fn percent_decode_edges() {
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%41"), "A");
        assert_eq!(percent_decode("a%zz"), "a%zz");
    }
}
