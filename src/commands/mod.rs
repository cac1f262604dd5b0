//! What an operator asks for, one module a command. Commands orchestrate: they take the
//! repository lock, call the components and the adapters below, and say what happened; they
//! own no format and talk to no external system themselves.

pub mod backup;
pub mod copy;
pub mod download;
pub mod drill;
pub mod list;
pub mod preflight;
pub mod prune;
pub mod recover;
pub mod requests;
pub mod restore;
pub mod verify;
