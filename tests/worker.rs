//! The compile worker of the tests' hosts (see `airlock::compile`).

fn main() {
    airlock::compile::run_worker_if_requested();
    eprintln!("this is the tests' compile worker; hosts run it, people do not");
    std::process::exit(64);
}
