//! PostgreSQL addresses as libpq writes them, for every client SagaPay opens.
//!
//! Operators configure one server URL (`SAGAPAY_POSTGRES_URL`) and each service appends its
//! database to it, so the URL's query (`sslmode`, `sslrootcert`) must survive that append.
//! Two clients read these URLs: sqlx (the services' pools) understands libpq's TLS
//! parameters, including `verify-full` and a CA file; tokio-postgres (refinery's migration
//! client) knows only `disable`/`prefer`/`require` and no CA file. [`connect_migration_client`]
//! reads the same parameters as sqlx and builds the migration client's TLS connector to
//! match, so a URL that works for the pools works for the migrations, with the same checks.

use anyhow::Context;
use std::str::FromStr;

/// libpq's `sslmode`, in increasing order of protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    Disable,
    Allow,
    /// libpq's default: TLS when the server offers it, no certificate check.
    Prefer,
    /// Encrypted, server certificate not checked.
    Require,
    /// Certificate chain checked against the CA, host name not.
    VerifyCa,
    /// Certificate chain and host name checked.
    VerifyFull,
}

impl SslMode {
    const ALL: [Self; 6] = [
        Self::Disable,
        Self::Allow,
        Self::Prefer,
        Self::Require,
        Self::VerifyCa,
        Self::VerifyFull,
    ];

    fn parse(s: &str) -> anyhow::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "sslmode={s} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                )
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// The server's identity is checked against a CA.
    pub fn authenticates_server(self) -> bool {
        self >= Self::VerifyCa
    }
}

/// The TLS parameters of a PostgreSQL URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsParams {
    pub mode: SslMode,
    /// `sslrootcert`: the CA file the server's certificate must chain to.
    pub root_cert: Option<String>,
}

/// Reads `sslmode` (default `prefer`, as libpq) and `sslrootcert` from `url`.
pub fn tls_params(url: &str) -> anyhow::Result<TlsParams> {
    let parsed = url::Url::parse(url).context("not a postgres:// URL")?;
    let mut params = TlsParams {
        mode: SslMode::Prefer,
        root_cert: None,
    };
    for (key, value) in parsed.query_pairs() {
        match key.as_ref() {
            "sslmode" => params.mode = SslMode::parse(&value)?,
            "sslrootcert" => params.root_cert = Some(value.into_owned()),
            _ => {}
        }
    }
    Ok(params)
}

/// The directory of the server's Unix socket when `url` names one rather than a network host:
/// its host is a path, percent-encoded (`postgres://u:p@%2Fvar%2Frun%2Fpostgresql:5432`), as
/// libpq, sqlx and tokio-postgres all read it. Nothing of such a connection leaves the machine
/// and the socket's file permissions say who the server is, so TLS has no work there (and
/// PostgreSQL offers none on a socket).
pub fn unix_socket(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let host = percent_encoding::percent_decode_str(parsed.host_str()?)
        .decode_utf8()
        .ok()?;
    host.starts_with('/').then(|| host.into_owned())
}

/// `server_url` with its path set to `database`, its query kept:
/// `postgres://u:p@h:5432?sslmode=verify-full` + `orders` →
/// `postgres://u:p@h:5432/orders?sslmode=verify-full`.
pub fn with_database(server_url: &str, database: &str) -> String {
    match url::Url::parse(server_url) {
        Ok(mut url) if !url.cannot_be_a_base() => {
            url.set_path(database);
            url.into()
        }
        // Not a URL: leave it for the client to reject with its own message.
        _ => format!("{}/{database}", server_url.trim_end_matches('/')),
    }
}

/// Connects refinery's client to `url`, with TLS as `sslmode` and `sslrootcert` ask; the
/// returned task drives the connection.
pub async fn connect_migration_client(
    url: &str,
) -> anyhow::Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> {
    let params = tls_params(url)?;
    // tokio-postgres refuses parameters it does not know: give it the URL without ours.
    let mut stripped = url::Url::parse(url).context("not a postgres:// URL")?;
    let rest: Vec<(String, String)> = stripped
        .query_pairs()
        .filter(|(k, _)| k != "sslmode" && k != "sslrootcert")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    stripped.set_query(None);
    if !rest.is_empty() {
        stripped.query_pairs_mut().extend_pairs(rest);
    }
    let mut config = tokio_postgres::Config::from_str(stripped.as_str())?;
    config.ssl_mode(match params.mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    if unix_socket(url).is_some() {
        return spawn_connection(config.connect(tokio_postgres::NoTls).await?);
    }
    let mut tls = native_tls::TlsConnector::builder();
    if let Some(path) = &params.root_cert {
        let pem = std::fs::read(path).with_context(|| format!("reading sslrootcert {path}"))?;
        // As libpq: the CA given is the only one trusted (not the system's roots besides).
        tls.disable_built_in_roots(true);
        tls.add_root_certificate(
            native_tls::Certificate::from_pem(&pem)
                .with_context(|| format!("sslrootcert {path} is not a PEM certificate"))?,
        );
    }
    // As libpq and sqlx: below verify-ca nothing is checked, verify-ca skips the host name.
    tls.danger_accept_invalid_certs(!params.mode.authenticates_server());
    tls.danger_accept_invalid_hostnames(params.mode != SslMode::VerifyFull);
    let tls = postgres_native_tls::MakeTlsConnector::new(tls.build()?);
    spawn_connection(config.connect(tls).await?)
}

/// Drives a migration client's connection in a task of its own.
fn spawn_connection<S, T>(
    (client, connection): (tokio_postgres::Client, tokio_postgres::Connection<S, T>),
) -> anyhow::Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "migration connection ended");
        }
    });
    Ok((client, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_goes_in_the_path_and_the_query_stays() {
        for (server, expected) in [
            ("postgres://u:p@h:5432", "postgres://u:p@h:5432/db"),
            ("postgres://u:p@h:5432/", "postgres://u:p@h:5432/db"),
            (
                "postgres://u:p@h:5432?sslmode=verify-full&sslrootcert=/ca.crt",
                "postgres://u:p@h:5432/db?sslmode=verify-full&sslrootcert=/ca.crt",
            ),
            ("postgres://u:p@h:5432/other", "postgres://u:p@h:5432/db"),
        ] {
            assert_eq!(with_database(server, "db"), expected, "{server}");
        }
    }

    #[test]
    fn a_socket_is_a_host_that_is_a_path() {
        let socket = "postgres://u:p@%2Fvar%2Frun%2Fpostgresql:5432";
        assert_eq!(unix_socket(socket).as_deref(), Some("/var/run/postgresql"));
        assert_eq!(
            unix_socket(&with_database(socket, "db")).as_deref(),
            Some("/var/run/postgresql")
        );
        assert_eq!(unix_socket("postgres://u:p@127.0.0.1:5432"), None);
        assert_eq!(unix_socket("postgres://u:p@db.internal:5432/db"), None);
        assert_eq!(unix_socket("not a url"), None);
    }

    #[test]
    fn tls_parameters_read_as_libpq_does() {
        for (url, mode, root) in [
            ("postgres://h/db", SslMode::Prefer, None),
            ("postgres://h/db?sslmode=disable", SslMode::Disable, None),
            ("postgres://h/db?sslmode=require", SslMode::Require, None),
            (
                "postgres://h/db?sslrootcert=/a%20b.crt&sslmode=verify-full",
                SslMode::VerifyFull,
                Some("/a b.crt"),
            ),
            ("postgres://h/db?sslmode=verify-ca", SslMode::VerifyCa, None),
        ] {
            let p = tls_params(url).unwrap();
            assert_eq!(p.mode, mode, "{url}");
            assert_eq!(p.root_cert.as_deref(), root, "{url}");
        }
        assert!(tls_params("postgres://h/db?sslmode=verify_full").is_err());
        assert!(!SslMode::Require.authenticates_server());
        assert!(SslMode::VerifyCa.authenticates_server());
    }
}
