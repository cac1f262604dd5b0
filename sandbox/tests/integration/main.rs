//! The sandbox's integration tests as one binary (linked once): a module per simulator and one
//! for the whole sandbox's lifecycle, sharing [`common`].

mod common;

mod charm_sim;
mod hook_tools;
mod juju_cli;
mod kube_api;
mod lifecycle;
mod pebble_sim;
