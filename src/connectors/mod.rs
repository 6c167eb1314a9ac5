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
