//! Lease tokens: what a lease grants on one node, signed with the cluster secret
//! (HMAC-SHA256), so that the node's executor manager checks it without a round trip to the
//! resource manager.
//!
//! Format: `base64url(claims JSON) "." base64url(HMAC-SHA256(secret, claims JSON))`, no
//! padding. A manager refuses a token whose signature does not verify (forged or for
//! another cluster), whose node is not its own, whose expiry has passed, or whose `nonce`
//! it has seen before (a token allows one allocation).

use serde::{Deserialize, Serialize};

use super::api::UnixMillis;

/// What a token grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub lease: u64,
    pub node: u64,
    pub client: String,
    pub cores: Vec<usize>,
    pub memory_mib: u64,
    pub gpus: Vec<String>,
    pub expires_at: UnixMillis,
    /// Unique per token.
    pub nonce: u64,
}

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed lease token")]
    Malformed,
    #[error("lease token signature does not verify (forged, or from another cluster)")]
    BadSignature,
    #[error("lease token is for node {token_node}, this is node {node}")]
    WrongNode { token_node: u64, node: u64 },
    #[error("lease {lease} expired at {expired_at} (now {now}, Unix ms)")]
    Expired {
        lease: u64,
        expired_at: UnixMillis,
        now: UnixMillis,
    },
    #[error("lease token already used (nonce {nonce})")]
    Reused { nonce: u64 },
}

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length.
    HmacSha256::new_from_slice(secret).expect("HMAC accepts every key length")
}

/// Signs `claims` with the cluster `secret`.
pub fn sign(secret: &[u8], claims: &Claims) -> String {
    // Plain structs of numbers and strings always serialize.
    let body = serde_json::to_vec(claims).unwrap_or_default();
    let mut m = mac(secret);
    m.update(&body);
    let signature = m.finalize().into_bytes();
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&body),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// Checks `token` against the cluster `secret` (constant-time), that it is for `node`
/// and not expired at `now`, and returns its claims. Reuse is the caller's to check (it
/// keeps the nonces it has seen).
///
/// # Errors
/// [`TokenError`] naming what failed.
pub fn verify(
    secret: &[u8],
    token: &str,
    node: u64,
    now: UnixMillis,
) -> Result<Claims, TokenError> {
    let (body, signature) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let body = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| TokenError::Malformed)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Malformed)?;
    let mut m = mac(secret);
    m.update(&body);
    m.verify_slice(&signature)
        .map_err(|_| TokenError::BadSignature)?;
    let claims: Claims = serde_json::from_slice(&body).map_err(|_| TokenError::Malformed)?;
    if claims.node != node {
        return Err(TokenError::WrongNode {
            token_node: claims.node,
            node,
        });
    }
    if claims.expires_at <= now {
        return Err(TokenError::Expired {
            lease: claims.lease,
            expired_at: claims.expires_at,
            now,
        });
    }
    Ok(claims)
}

/// Now, in Unix milliseconds.
pub fn now_millis() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            lease: 7,
            node: 3,
            client: "rank-0".into(),
            cores: vec![2, 3],
            memory_mib: 512,
            gpus: vec![],
            expires_at: 2_000,
            nonce: 99,
        }
    }

    #[test]
    fn a_signed_token_verifies_and_returns_its_claims() {
        let t = sign(b"secret", &claims());
        assert_eq!(verify(b"secret", &t, 3, 1_000), Ok(claims()));
    }

    #[test]
    fn forged_wrong_node_expired_and_garbage_are_refused() {
        let t = sign(b"secret", &claims());
        assert_eq!(
            verify(b"other", &t, 3, 1_000),
            Err(TokenError::BadSignature)
        );
        assert!(matches!(
            verify(b"secret", &t, 4, 1_000),
            Err(TokenError::WrongNode { .. })
        ));
        assert!(matches!(
            verify(b"secret", &t, 3, 2_000),
            Err(TokenError::Expired { .. })
        ));
        // Claims edited after signing: more cores.
        let mut more = claims();
        more.cores.push(4);
        let forged_body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&more).unwrap());
        let signature = t.split_once('.').unwrap().1;
        assert_eq!(
            verify(b"secret", &format!("{forged_body}.{signature}"), 3, 1_000),
            Err(TokenError::BadSignature)
        );
        for junk in ["", ".", "abc", "a.b", "!!.??"] {
            assert!(verify(b"secret", junk, 3, 1_000).is_err(), "{junk:?}");
        }
    }
}
