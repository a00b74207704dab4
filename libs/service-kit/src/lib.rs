//! Bootstrapping a SagaPay service: configuration from the environment, its database
//! (created when absent, migrated), the `/health`, `/ready` and `/metrics` routes, the one
//! error shape of every HTTP API, and a handle that runs and stops the service's tasks.
//!
//! Each service crate is a library whose `start(config)` returns a [`ServiceHandle`], so tests
//! can run any set of services in-process; its `main.rs` only reads the environment and waits.

pub mod api_error;
pub mod config;
pub mod db;
pub mod http;
pub mod platform;
pub mod runtime;

pub use api_error::ApiError;
pub use config::{CommonConfig, Environment};
pub use platform::Platform;
pub use runtime::{ServiceBuilder, ServiceHandle};
