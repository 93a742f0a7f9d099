//! The serde model of config.yaml and its validation: every setting the proxy reads lives here.

mod load;
mod model;

pub use load::{load_file, load_str, ConfigError};
pub use model::*;
