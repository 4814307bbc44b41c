//! Integration tests over real HTTP: the service as `imgbatch serve` runs it, on SQLite and on
//! Postgres (when TEST_POSTGRES_URL names a server).

mod common;

mod bundle;
mod client;
mod crash;
mod logs;
mod options;
mod outputs;
mod pipeline;
mod requests;
mod retention;
mod scale;
mod security;
mod status;
mod store_contract;
mod upload;
mod web;
mod webhooks;
