//! The agent's configuration: the config file's schema (`file`), its
//! tuning sections (`knobs`), the units values are written in (`units`),
//! and the effective settings that the command line, the file and the
//! presets resolve to (`settings`).
//!
//! Flags, with the environment variables that stand for them, win over
//! the file; the file wins over the preset; tags merge key by key.

pub mod file;
pub mod knobs;
pub mod settings;
pub mod units;

pub use file::{AgentFile, ConfigFile};
pub use settings::{AgentSettings, Reload, SettingError};
