//! End-to-end tests on the real stack (`scripts/stack.sh up` must be running).
//! One test binary, so the services are linked once.

mod architecture;
mod consumer_batch;
mod consumer_failures;
mod crash;
mod credentials;
mod currencies;
mod dashboards;
mod deadletter;
mod edge;
mod happy_path;
mod harness;
mod http_limits;
mod ledger;
mod limbo;
mod listing;
mod manual_capture;
mod out_of_order;
mod overload;
mod poison;
mod production;
mod production_profile;
mod provider_paths;
mod rate_limit;
mod reconcile;
mod redelivery;
mod refunds;
mod relay;
mod replay;
mod risk_review;
mod scale;
mod seams;
mod settings;
mod traces;
mod upgrades;
mod webhooks;
