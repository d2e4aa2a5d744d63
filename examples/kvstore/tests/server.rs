//! Integration tests: a real server on loopback, real TCP clients.

use std::time::Duration;

use kvstore::{Client, start};

#[test]
fn a_client_round_trips_over_tcp() {
    let mut c = Client::connect(start()).unwrap();
    assert_eq!(c.call("SET city Lisbon").unwrap(), "OK");
    assert_eq!(c.call("GET city").unwrap(), "VALUE Lisbon");
}

#[test]
fn clients_share_one_store() {
    let addr = start();
    let mut writer = Client::connect(addr).unwrap();
    let mut reader = Client::connect(addr).unwrap();
    writer.call("SET shared yes").unwrap();
    assert_eq!(reader.call("GET shared").unwrap(), "VALUE yes");
}

#[test]
fn many_concurrent_clients() {
    let addr = start();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr).unwrap();
                for j in 0..50 {
                    assert_eq!(c.call(&format!("SET k{i}-{j} v")).unwrap(), "OK");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut c = Client::connect(addr).unwrap();
    assert_eq!(c.call("COUNT").unwrap(), "COUNT 800");
}

#[test]
fn a_bad_command_keeps_the_connection_usable() {
    let mut c = Client::connect(start()).unwrap();
    assert!(c.call("NOPE").unwrap().starts_with("ERR"));
    assert_eq!(c.call("SET still working").unwrap(), "OK");
}

/// Stands in for the slow end-to-end checks every real suite has.
#[test]
fn a_slow_soak_of_writes_and_reads() {
    let mut c = Client::connect(start()).unwrap();
    for i in 0..200 {
        c.call(&format!("SET soak{i} {i}")).unwrap();
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert_eq!(c.call("GET soak199").unwrap(), "VALUE 199");
}
