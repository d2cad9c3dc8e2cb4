//! The ping-pong loop of `rafi bench pingpong` (`rafi::bench::pingpong::PingpongSide`), both
//! sides in one process on two threads over shm: the measured loop allocates nothing, on
//! either side, for either op and for the blocking wait too (after a first short run:
//! the fabric allocates once on first use).

use rafi::bench::pingpong::{PingOp, PingpongConfig, PingpongSide, WaitMode};
use rafi::bench::LatencyRecorder;
use rafi::fabric::FabricKind;

#[global_allocator]
static GLOBAL: rdma_mock::alloc_counter::CountingAllocator =
    rdma_mock::alloc_counter::CountingAllocator;

use rdma_mock::alloc_counter::allocations;

fn shm() -> rdma_mock::Device {
    rdma_mock::Device::open(rdma_mock::DeviceConfig::new(rdma_mock::Fabric::Shm)).unwrap()
}

#[test]
fn the_measured_loop_allocates_nothing() {
    let probe = allocations();
    drop(std::hint::black_box(vec![1u8]));
    assert_eq!(allocations(), probe + 1, "the counter counts");

    for (op, size, wait) in [
        (PingOp::WriteImm, 64, WaitMode::Yield),
        (PingOp::Send, 100, WaitMode::Yield),
        (PingOp::WriteImm, 0, WaitMode::Block),
    ] {
        let mut config = PingpongConfig::new(FabricKind::Shm);
        (config.op, config.size, config.wait) = (op, size, wait);
        let mut a = PingpongSide::open(shm(), &config).unwrap();
        let mut b = PingpongSide::open(shm(), &config).unwrap();
        let (ha, hb) = (a.hello(), b.hello());
        // A first short run (with signaled sends) is not counted: the fabric allocates once on
        // first use.
        let responder = std::thread::spawn(move || {
            b.connect(&ha).unwrap();
            b.respond(0, 100, &mut || Ok(())).unwrap();
            let before = allocations();
            b.respond(100, 2000, &mut || Ok(())).unwrap();
            allocations() - before
        });
        a.connect(&hb).unwrap();
        let mut recorder = LatencyRecorder::new();
        a.measure(0, 100, &mut LatencyRecorder::new(), &mut || Ok(()))
            .unwrap();
        let before = allocations();
        a.measure(100, 2000, &mut recorder, &mut || Ok(())).unwrap();
        let measuring = allocations() - before;
        let responding = responder.join().unwrap();
        assert_eq!(recorder.len(), 2000);
        assert_eq!(
            (measuring, responding),
            (0, 0),
            "{op:?} {size} B {wait:?}: allocations on the (measuring, responding) side"
        );
    }
}
