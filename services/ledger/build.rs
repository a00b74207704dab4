//! The migrations in `migrations/ledger` are embedded at compile time (refinery's
//! `embed_migrations!`): a migration added there must rebuild this crate.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations/ledger");
}
