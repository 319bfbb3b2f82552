//! Where the PostgreSQL URL comes from (`env:NAME` or the URL itself), and how it is
//! shown: never with its password.

use std::fmt;

use super::PgError;
use crate::config::{check_pg_url, redact_pg_url};

/// A resolved connection string. `Debug` and `Display` show it without the password.
#[derive(Clone)]
pub struct PgUrl {
    /// As configured: `env:NAME` or the URL (with its password, if it had one).
    setting: String,
    /// The URL to connect with.
    secret: String,
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({})", self.shown())
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown())
    }
}

impl PgUrl {
    /// Resolves `setting` (`env:NAME` reads the variable now); `what` names where the
    /// setting came from in errors (`--pg-url`, `index.pg_url`, a run's record).
    pub fn resolve(setting: &str, what: &str) -> Result<Self, PgError> {
        let bad = |message: String| PgError::BadUrl {
            setting: what.to_string(),
            message,
        };
        check_pg_url(setting).map_err(bad)?;
        let secret = match setting.strip_prefix("env:") {
            Some(var) => {
                let value = std::env::var(var).map_err(|_| PgError::EnvUnset {
                    setting: format!("{what} = {setting}"),
                    var: var.to_string(),
                })?;
                check_pg_url(&value).map_err(|m| PgError::BadUrl {
                    setting: format!("{what} = {setting}: the value of {var}"),
                    message: m,
                })?;
                value
            }
            None => setting.to_string(),
        };
        // Parse now, so that a malformed URL is an error here, not at connect time.
        secret
            .parse::<postgres::Config>()
            .map_err(|e| bad(format!("{}: {e}", redact_pg_url(&secret))))?;
        Ok(Self {
            setting: setting.to_string(),
            secret,
        })
    }

    /// The URL without its password (for messages and logs).
    pub fn shown(&self) -> String {
        redact_pg_url(&self.secret)
    }

    /// What a run folder records: `env:NAME`, or the URL without its password (which
    /// then comes from `PGPASSWORD` when the run is searched).
    pub fn record(&self) -> String {
        redact_pg_url(&self.setting)
    }

    /// The client configuration: the URL, `PGPASSWORD` when the URL has no password,
    /// a 10 s connect timeout unless the URL sets one, and vitrine's name.
    pub fn config(&self) -> Result<postgres::Config, PgError> {
        let mut config: postgres::Config = self.secret.parse().map_err(|e| PgError::BadUrl {
            setting: self.shown(),
            message: format!("{e}"),
        })?;
        if config.get_password().is_none()
            && let Ok(p) = std::env::var("PGPASSWORD")
        {
            config.password(p);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("vitrine");
        }
        // Server notices (pgvector's "graph no longer fits into maintenance_work_mem")
        // go to the log, never to the terminal.
        config.notice_callback(|n| {
            tracing::info!("postgres {}: {}", n.severity(), n.message());
        });
        Ok(config)
    }
}
