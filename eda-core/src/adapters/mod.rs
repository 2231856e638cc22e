//! Adapters shipped with eda. The core knows them only through the
//! [`Adapter`](crate::Adapter) and [`Database`](crate::backend::Database) traits.
//! The in-memory database, the default one, is at the root:
//! [`InMemoryDatabase`](crate::InMemoryDatabase) (one path per item).

use std::fmt;

pub mod in_process;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod kept;
pub(crate) mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// The URL with any password replaced by `***`, in the user info
/// (`postgres://user:secret@host`) and in a `password=` parameter.
///
/// ```
/// # use eda_core::adapters::redact_url;
/// assert_eq!(redact_url("postgres://app:s3cr3t@db:5432/shop"), "postgres://app:***@db:5432/shop");
/// assert_eq!(redact_url("postgres://db/shop?user=app&password=s3cr3t"), "postgres://db/shop?user=app&password=***");
/// assert_eq!(redact_url("sqlite://allocation.db"), "sqlite://allocation.db");
/// assert_eq!(
///     redact_url("amqp://app:s3cr3t@mq1/%2f,amqp://app:s3cr3t@mq2/%2f"),
///     "amqp://app:***@mq1/%2f,amqp://app:***@mq2/%2f"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    // A list of URLs (a cluster's nodes: `amqp://…,amqp://…`), each hidden.
    if url.contains(',') && url.split(',').all(|part| part.contains("://")) {
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                let start = rest_start + colon + 1;
                let end = rest_start + at;
                out.replace_range(start..end, "***");
            }
        }
    }
    if let Some(query_start) = out.find('?') {
        let (head, query) = out.split_at(query_start + 1);
        let query = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&");
        out = format!("{head}{query}");
    }
    out
}

/// A URL that prints with its password hidden.
#[derive(Clone, PartialEq, Eq)]
pub struct RedactedUrl(pub String);

impl fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(redact_url("postgres://u:p@h/d"), "postgres://u:***@h/d");
        assert_eq!(
            redact_url("postgres://u:p%40x@h:1/d?sslmode=require"),
            "postgres://u:***@h:1/d?sslmode=require"
        );
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(
            redact_url("postgres://h/d?password=x&user=u"),
            "postgres://h/d?password=***&user=u"
        );
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(
            format!("{}", RedactedUrl("postgres://a:b@c".into())),
            "postgres://a:***@c"
        );
        assert_eq!(
            format!("{:?}", RedactedUrl("postgres://a:b@c".into())),
            "\"postgres://a:***@c\""
        );
    }
}
