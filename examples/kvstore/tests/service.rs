//! Tests against the kvstore server running in its container: testfleet starts it and exports
//! its address as KVSTORE_ADDR. The container is shared by the tests on one agent, so each test
//! uses keys of its own.

use kvstore::Client;

fn server() -> Client {
    let addr = std::env::var("KVSTORE_ADDR")
        .expect("KVSTORE_ADDR is set by testfleet from testfleet.toml; run this suite with `testfleet run`");
    Client::connect(addr.as_str()).expect("the kvstore container answers")
}

#[test]
fn set_and_get_across_the_network() {
    let mut c = server();
    assert_eq!(c.call("SET svc:capital Lisbon").unwrap(), "OK");
    assert_eq!(c.call("GET svc:capital").unwrap(), "VALUE Lisbon");
}

#[test]
fn a_second_connection_sees_the_first_ones_writes() {
    let mut writer = server();
    let mut reader = server();
    writer.call("SET svc:shared yes").unwrap();
    assert_eq!(reader.call("GET svc:shared").unwrap(), "VALUE yes");
}

#[test]
fn deletes_are_visible_to_everyone() {
    let mut c = server();
    c.call("SET svc:gone soon").unwrap();
    assert_eq!(c.call("DEL svc:gone").unwrap(), "DELETED 1");
    assert_eq!(server().call("GET svc:gone").unwrap(), "NONE");
}

#[test]
fn the_server_rejects_garbage_and_keeps_serving() {
    let mut c = server();
    assert!(c.call("FLY me").unwrap().starts_with("ERR"));
    assert_eq!(c.call("SET svc:after-garbage ok").unwrap(), "OK");
}
