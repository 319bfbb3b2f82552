//! Connecting: one-line errors for the ways a connection fails (nothing listening,
//! wrong password, a server that insists on TLS, no pgvector), and the mapping of
//! every client error to one naming the server.

use postgres::error::SqlState;
use postgres::{Client, NoTls};

use super::{PgError, PgUrl};

/// Oldest pgvector with HNSW indexes.
const MIN_PGVECTOR: (u32, u32) = (0, 5);

/// Connects to `url` and checks that its database has pgvector (0.5 or newer).
pub fn connect(url: &PgUrl) -> Result<Client, PgError> {
    let config = url.config()?;
    let mut client = config.connect(NoTls).map_err(|e| connect_error(url, &e))?;
    let version: Option<String> = client
        .query_opt(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'",
            &[],
        )
        .map_err(|e| error(url, &e))?
        .map(|row| row.get(0));
    match version {
        Some(v) if parse_version(&v) >= MIN_PGVECTOR => Ok(client),
        Some(v) => Err(PgError::OldExtension {
            url: url.shown(),
            version: v,
        }),
        None => {
            let available = client
                .query_opt(
                    "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'",
                    &[],
                )
                .map_err(|e| error(url, &e))?
                .is_some();
            Err(PgError::MissingExtension {
                url: url.shown(),
                hint: if available {
                    String::new()
                } else {
                    "; this server has no pgvector installed at all: install it first (most managed services ship it)".into()
                },
            })
        }
    }
}

fn parse_version(v: &str) -> (u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The message of an error and of its causes, on one line.
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(db) = e
        .downcast_ref::<postgres::Error>()
        .and_then(postgres::Error::as_db_error)
    {
        return db.message().replace('\n', " ");
    }
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text.replace('\n', " ")
}

/// An error while connecting.
fn connect_error(url: &PgUrl, e: &postgres::Error) -> PgError {
    let message = one_line(e);
    let (shown, code) = (url.shown(), e.code());
    // Before the login codes: a server that only accepts TLS answers "no pg_hba.conf
    // entry … SSL off" with an authorization code.
    if message.contains("TLS") || message.contains("SSL off") || message.contains("encryption") {
        return PgError::Tls {
            url: shown,
            message,
        };
    }
    if code == Some(&SqlState::INVALID_PASSWORD)
        || code == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
        || message.contains("password missing")
    {
        return PgError::Auth {
            url: shown,
            message,
        };
    }
    if e.as_db_error().is_some() {
        return PgError::Server {
            url: shown,
            message,
        };
    }
    PgError::Unreachable {
        url: shown,
        message,
    }
}

/// An error of a statement on an open connection: a lost connection says so.
pub fn error(url: &PgUrl, e: &postgres::Error) -> PgError {
    let message = one_line(e);
    let shown = url.shown();
    let admin_shutdown = matches!(
        e.code(),
        Some(c) if *c == SqlState::ADMIN_SHUTDOWN || *c == SqlState::CRASH_SHUTDOWN
    );
    if e.is_closed() || admin_shutdown || e.as_db_error().is_none() && is_io(e) {
        return PgError::Lost {
            url: shown,
            message,
        };
    }
    PgError::Server {
        url: shown,
        message,
    }
}

/// An error communicating with the server (its source is an I/O error).
fn is_io(e: &postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}
