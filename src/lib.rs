//! verifyiam: an Envoy external-authorization (ext_authz v3, gRPC) service that allows a request
//! when its bearer token is valid, carries the required scope, and its principal holds
//! `apigee.deployments.invoke` on the targeted API deployment, at project level or on the
//! deployment itself.
//!
//! A Check flows one way: [`extauthz`] decodes it, [`route`] names the deployment, [`authn`]
//! verifies the token, [`authz`] evaluates the policies of [`store`] with the rules of [`iam`], and
//! [`extauthz`] answers Envoy, with [`backend`]'s ID token when the backend takes one. [`admin`] manages the policies; [`server`] wires it all.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod authn;
pub mod authz;
pub mod backend;
pub mod cli;
pub mod client;
pub mod config;
pub mod extauthz;
pub mod iam;
pub mod listener;
pub mod proto;
pub mod route;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod upstream;
