//! One connector per upstream. Each owns its I/O and speaks to the bridge only through
//! [`crate::connector`].

pub mod exlive;
pub mod iauto360;
pub mod kingxun;
pub mod xchanger;

/// The HTTP client of a polling connector: bounded request and connect times, our user
/// agent, a small idle pool.
pub(crate) fn http_client(timeout: std::time::Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(std::time::Duration::from_secs(10).min(timeout))
        .user_agent(concat!("vehicle2mqtt/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(4)
        .build()
}

/// Credentials and tokens cross a plain `http://` upstream unencrypted: say so at start,
/// unless it is this machine (tests, demo, a local proxy).
pub(crate) fn warn_if_plain_http(connector: &str, base_url: &str) {
    let Some(rest) = base_url.strip_prefix("http://") else {
        return;
    };
    let local =
        rest.starts_with("127.") || rest.starts_with("localhost") || rest.starts_with("[::1]");
    if !local {
        tracing::warn!(
            event = "plain_http_upstream",
            connector,
            base_url,
            "the upstream is plain http://: credentials and tokens travel unencrypted"
        );
    }
}
