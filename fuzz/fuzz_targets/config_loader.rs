//! Any config text in any supported format: parsing and validation never
//! panic; what validates has a positive body limit within the ceiling.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use steer_agent::config::FileConfig;

fuzz_target!(|input: (u8, &str)| {
    let (format, text) = input;
    let path = match format % 3 {
        0 => Path::new("steer.yaml"),
        1 => Path::new("steer.toml"),
        _ => Path::new("steer.json"),
    };
    if let Ok(settings) = FileConfig::parse(path, text).and_then(FileConfig::into_settings) {
        assert!(settings.max_body_bytes > 0);
        assert!(settings.max_body_bytes <= steer_agent::config::MAX_BODY_BYTES_LIMIT);
    }
});
