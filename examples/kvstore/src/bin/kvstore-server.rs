//! The kvstore server as a program: what the example's service container runs.

use std::net::TcpListener;

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "7070".into());
    let listener = TcpListener::bind(format!("0.0.0.0:{port}")).expect("bind the server port");
    println!("kvstore listening on 0.0.0.0:{port}");
    kvstore::serve(listener, kvstore::Store::default());
}
