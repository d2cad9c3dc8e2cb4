//! Who is asking: the bearer credential of a request, checked in constant time.
//!
//! `Authorization: Bearer <cluster secret>` is an executor manager (or an operator);
//! `Bearer <client>:<secret>` is a configured client.

use std::collections::BTreeMap;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// Holds the cluster secret: an executor manager or an operator.
    Manager,
    /// A configured client, by name.
    Client(String),
}

/// The secrets requests are checked against.
#[derive(Clone)]
pub struct Credentials {
    secret: Vec<u8>,
    clients: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret.
        f.debug_struct("Credentials")
            .field("clients", &self.clients.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn new(secret: &str, clients: &BTreeMap<String, String>) -> Credentials {
        Credentials {
            secret: secret.as_bytes().to_vec(),
            clients: clients
                .iter()
                .map(|(name, secret)| (name.clone(), secret.as_bytes().to_vec()))
                .collect(),
        }
    }

    /// The caller an `Authorization` header value names, if its secret is right.
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<Principal> {
        let value = authorization?.trim();
        let (scheme, credential) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let credential = credential.trim().as_bytes();
        if constant_time_eq(credential, &self.secret) {
            return Some(Principal::Manager);
        }
        let colon = credential.iter().position(|&b| b == b':')?;
        let (name, secret) = (&credential[..colon], &credential[colon + 1..]);
        let name = std::str::from_utf8(name).ok()?;
        let expected = self.clients.get(name)?;
        constant_time_eq(secret, expected).then(|| Principal::Client(name.to_string()))
    }
}

/// Compares two secrets in time that depends on their lengths only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> Credentials {
        let clients = BTreeMap::from([("rank-0".to_string(), "pw0".to_string())]);
        Credentials::new("cluster", &clients)
    }

    #[test]
    fn managers_and_clients_are_told_apart_and_wrong_secrets_refused() {
        let c = credentials();
        assert_eq!(
            c.authenticate(Some("Bearer cluster")),
            Some(Principal::Manager)
        );
        assert_eq!(
            c.authenticate(Some("bearer rank-0:pw0")),
            Some(Principal::Client("rank-0".into()))
        );
        for bad in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer "),
            Some("Basic cluster"),
            Some("Bearer cluster2"),
            Some("Bearer rank-0:pw1"),
            Some("Bearer rank-1:pw0"),
            Some("Bearer rank-0"),
            Some("Bearer :cluster"),
        ] {
            assert_eq!(c.authenticate(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
