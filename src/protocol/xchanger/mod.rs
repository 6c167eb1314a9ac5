//! xchanger (Lynk & Co / Geely cloud), docs/protocols/xchanger.md: the pure parts.
//! `sign`: the v2 request signature and the one query string used in URL and signature.
//! `status`: the vehicle status document → the shared model.
//!
//! The connector (HTTP, tokens, polling, commands) is `connectors::xchanger`.

pub mod sign;
pub mod status;

/// Error codes the cloud answers with (`code` in the reply).
pub fn code_text(code: &str) -> &'static str {
    match code.trim() {
        "1000" => "ok",
        "1402" => "token expired",
        "1501" => "main token expired: log in again",
        "8006" | "4038" => "vehicle binding lost",
        "8040" => "vehicle not bound to this account",
        "8160" => "no permission",
        "1443" => "bad nonce",
        _ => "unknown error",
    }
}
