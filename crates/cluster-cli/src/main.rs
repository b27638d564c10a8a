//! `cluster`: runs a program as a supervised cluster of worker processes.
//!
//! Not built yet: this arrives with the CLI issue, on top of `cluster-watcher`.

fn main() {
    eprintln!("cluster: not implemented yet");
    std::process::exit(2);
}
