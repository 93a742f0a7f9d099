//! The serde model of config.yaml and its validation: every setting the proxy reads lives here.

mod cache;
mod load;
mod model;

pub use cache::{CacheConfig, CacheMode, CacheRule};
pub use load::{load_file, load_str, ConfigError};
pub use model::*;
