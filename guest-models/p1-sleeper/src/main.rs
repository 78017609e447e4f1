//! Test fixture: a WASI preview 1 command that sleeps for an hour before
//! answering. The host must not let the sleep hold a thread past the
//! request's deadline.

use std::io::{Read as _, Write as _};

fn main() {
    let mut request = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut request);
    std::thread::sleep(std::time::Duration::from_secs(3600));
    let _ = std::io::stdout().write_all(br#"{"outputs": []}"#);
}
