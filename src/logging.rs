//! tracing set-up. Secrets never reach the log: config types mask them in `Debug`, and
//! connectors log only ids and reasons, never tokens or keys.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `level`.
pub fn init(format: LogFormat, level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| {
            // The embedded broker logs every connection, and routine disconnects as errors.
            EnvFilter::try_new(format!(
                "{level},rumqttd=warn,rumqttd::router=off,rumqttd::server=off"
            ))
            .unwrap_or_else(|_| EnvFilter::new("info"))
        });
    // Colour codes only for a person at a terminal: a log file or journal gets plain text.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Shows the first and last two characters of a token, enough to tell two apart.
pub fn redact(secret: &str) -> String {
    let n = secret.chars().count();
    if n <= 8 {
        return "***".into();
    }
    let head: String = secret.chars().take(2).collect();
    let tail: String = secret.chars().skip(n - 2).collect();
    format!("{head}***{tail}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_the_middle() {
        assert_eq!(super::redact("short"), "***");
        assert_eq!(super::redact("eyJhbGciOiJIUzI1NiJ9.abcdef"), "ey***ef");
    }
}
